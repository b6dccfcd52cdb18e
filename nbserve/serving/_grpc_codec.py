"""KServe v2 gRPC tensors <-> NumPy: a pure codec with no server, loop or core in it.

``decode_infer_request`` turns a ``ModelInferRequest`` into NumPy arrays by input name;
``encode_infer_response`` builds a ``ModelInferResponse`` with ``raw_output_contents``, as Triton
answers. Both follow Triton's wire rules:

* Tensor data comes either in ``raw_input_contents`` (one entry per input, in ``inputs`` order,
  little-endian, BYTES as 4-byte length-prefixed elements; what tritonclient sends) or in each input's
  typed ``contents`` (``fp32_contents``...; what hand-written clients often send). A request never
  mixes the two.
* FP16 and BF16 exist only as raw bytes: ``InferTensorContents`` has no field for them.

Raw inputs are decoded with ``np.frombuffer``: no copy, and the arrays are read-only (the request
owns the bytes). Every malformed request raises :class:`nbserve.errors.InvalidInput`, whose message
names the input, what was expected and what came.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..tensors import DTYPES, deserialize_bytes, numpy_dtype, serialize_bytes, to_numpy, triton_dtype
from .protocol import _classify  # the HTTP codec's top-k: one implementation of the extension

__all__ = [
    "DecodedRequest",
    "decode_infer_request",
    "decode_inputs",
    "encode_infer_response",
    "parameter_value",
    "set_parameter",
    "CONTENTS_FIELD",
]

# The typed ``InferTensorContents`` field that carries each data type (Triton's grpc_service.proto).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Request parameters the protocol defines; the rest go to the core's ``parameters``.
_PRIORITY = "priority"
_TIMEOUT = "timeout"

_NUMPY_BY_WIRE: dict[str, np.dtype] = {row.name: row.numpy for row in DTYPES.values() if row.numpy is not None}
# NumPy dtype -> wire name, for the response path (``triton_dtype`` handles the rare rest).
_WIRE_BY_NUMPY: dict[np.dtype, str] = {dt: name for name, dt in _NUMPY_BY_WIRE.items() if name != "BYTES"}


@dataclasses.dataclass(slots=True)
class DecodedRequest:
    """What the servicer hands the core for one ``ModelInferRequest``."""

    model: str
    version: str
    id: str
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    priority: int = 0
    timeout_us: int = 0
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: requested output -> top-k count, for Triton's classification extension
    classification: dict[str, int] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- parameters
def parameter_value(param: Any) -> Any:
    """The Python value of an ``InferParameter`` (or ``ModelRepositoryParameter``)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def set_parameter(param: Any, value: Any) -> None:
    """Store a Python value in an ``InferParameter``, choosing the field from its type."""
    if isinstance(value, bool) or isinstance(value, np.bool_):
        param.bool_param = bool(value)
    elif isinstance(value, (int, np.integer)):
        value = int(value)
        if value > 2**63 - 1:
            param.uint64_param = value
        else:
            param.int64_param = value
    elif isinstance(value, (float, np.floating)):
        param.double_param = float(value)
    elif isinstance(value, bytes):
        param.string_param = value.decode("utf-8", "replace")
    else:
        param.string_param = str(value)


def _parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in params.items()}


# ----------------------------------------------------------------------------- requests
def decode_infer_request(request: Any) -> DecodedRequest:
    """Decode a ``service_pb2.ModelInferRequest``; raises InvalidInput for malformed tensors."""
    model = request.model_name
    priority = timeout_us = 0
    params: dict[str, Any] = {}
    if request.parameters:
        params = _parameters(request.parameters)
        priority = params.pop(_PRIORITY, 0) or 0
        timeout_us = params.pop(_TIMEOUT, 0) or 0
        for key, value in ((_PRIORITY, priority), (_TIMEOUT, timeout_us)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(
                    f"request parameter '{key}' must be a non-negative integer",
                    model=model,
                    got=repr(value),
                    hint=f"send parameters['{key}'] as int64_param or uint64_param"
                    + (" in microseconds" if key == _TIMEOUT else ""),
                )
    outputs = None
    classification: dict[str, int] = {}
    if request.outputs:
        outputs = []
        for requested in request.outputs:
            if requested.parameters:
                count = _output_parameters(model, requested)
                if count:
                    classification[requested.name] = count
            outputs.append(requested.name)
    return DecodedRequest(
        model=model,
        version=request.model_version,
        id=request.id,
        inputs=decode_inputs(request, model=model),
        outputs=outputs,
        priority=priority,
        timeout_us=timeout_us,
        parameters=params,
        classification=classification,
    )


def _output_parameters(model: str, requested: Any) -> int:
    """The classification count of a requested output (0 for none); rejects shared memory."""
    params = _parameters(requested.parameters)
    count = params.get("classification", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidInput(
            "the classification parameter must be a non-negative integer",
            model=model,
            tensor=requested.name,
            got=repr(count),
            hint="pass class_count=<k> to InferRequestedOutput",
        )
    if "shared_memory_region" in params:
        raise InvalidInput(
            "shared-memory outputs are not supported",
            model=model,
            tensor=requested.name,
            hint="request the output without a shared-memory region; it comes back in the response",
        )
    return count


def decode_inputs(request: Any, *, model: str = "") -> dict[str, np.ndarray]:
    """The request's tensors as NumPy arrays by input name (BYTES as object arrays of bytes)."""
    raw_contents = request.raw_input_contents
    tensors = request.inputs
    n_raw = len(raw_contents)
    model_name = model or None
    if n_raw and n_raw != len(tensors):
        raise InvalidInput(
            "raw_input_contents must hold one entry per input",
            model=model_name,
            expected=f"{len(tensors)} entries (inputs {[t.name for t in tensors]})",
            got=f"{n_raw}",
            hint="send every input's data in raw_input_contents, in the order of 'inputs', or none of it",
        )
    out: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in out:
            raise InvalidInput("input appears twice in the request", model=model_name, tensor=name,
                               hint="send each input once")
        if tensor.parameters and "shared_memory_region" in tensor.parameters:
            raise InvalidInput(
                "shared-memory inputs are not supported",
                model=model_name,
                tensor=name,
                hint="send the data in the request (raw_input_contents), as tritonclient does by default",
            )
        datatype = tensor.datatype
        shape = tuple(tensor.shape)
        if n_raw:
            # The common case (tritonclient, perf_analyzer): a fixed-size type whose raw bytes fit.
            dtype = _NUMPY_BY_WIRE.get(datatype)
            if dtype is not None and datatype != "BYTES":
                count, negative = 1, False
                for dim in shape:
                    count *= dim
                    negative = negative or dim < 0
                raw = raw_contents[index]
                if not negative and len(raw) == count * dtype.itemsize and not tensor.HasField("contents"):
                    out[name] = np.frombuffer(raw, dtype).reshape(shape)
                    continue
        for dim in shape:
            if dim < 0:
                raise InvalidInput("has a negative dimension", model=model_name, tensor=name, got=list(shape),
                                   hint="send the actual shape of the data; -1 is only for model configs")
        if n_raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    "has both raw_input_contents and typed contents",
                    model=model_name,
                    tensor=name,
                    hint="send the data once: raw_input_contents for every input, or contents for every input",
                )
            out[name] = _from_raw(raw_contents[index], datatype, shape, name, model)
        elif tensor.HasField("contents"):
            out[name] = _from_contents(tensor.contents, datatype, shape, name, model)
        else:
            raise InvalidInput(
                "has no data",
                model=model_name,
                tensor=name,
                hint="set raw_input_contents (tritonclient: InferInput.set_data_from_numpy) or the input's contents",
            )
    return out


def _wire_dtype(datatype: str, name: str, model: str) -> np.dtype:
    dtype = _NUMPY_BY_WIRE.get(datatype)
    if dtype is not None:
        return dtype
    if datatype == "BF16":
        return numpy_dtype("BF16")  # needs ml_dtypes, which tritonclient installs
    raise InvalidInput(
        f"unknown datatype {datatype!r}",
        model=model or None,
        tensor=name,
        expected="one of " + ", ".join(DTYPES),
        hint="use the KServe v2 datatype names, e.g. 'FP32'",
    )


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _from_raw(raw: bytes, datatype: str, shape: tuple[int, ...], name: str, model: str) -> np.ndarray:
    if datatype == "BYTES":
        return deserialize_bytes(raw, shape, tensor=name, model=model)
    dtype = _wire_dtype(datatype, name, model)
    expected = _element_count(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            "raw data size does not match its shape and datatype",
            model=model or None,
            tensor=name,
            expected=f"{expected} bytes for shape {list(shape)} of {datatype}",
            got=f"{len(raw)} bytes",
            hint="send the array's bytes (arr.tobytes()) with the array's shape and datatype",
        )
    return np.frombuffer(raw, dtype).reshape(shape)


def _from_contents(contents: Any, datatype: str, shape: tuple[int, ...], name: str, model: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        _wire_dtype(datatype, name, model)  # unknown names get the unknown-datatype message
        raise InvalidInput(
            f"{datatype} data can only be sent as raw bytes",
            model=model or None,
            tensor=name,
            hint="put the data in raw_input_contents (tritonclient does this for every datatype)",
        )
    values = getattr(contents, field)
    count = _element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"contents.{field} holds the wrong number of elements",
            model=model or None,
            tensor=name,
            expected=f"{count} for shape {list(shape)}",
            got=len(values),
            hint=f"send {datatype} data in contents.{field}, one value per element, row-major",
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = _NUMPY_BY_WIRE[datatype]
    if not count:
        return np.empty(shape, dtype)
    if dtype.kind in "iu" and dtype.itemsize < 4:
        # int_contents / uint_contents are 32-bit on the wire: check the narrower range explicitly
        # (NumPy 1.x wraps out-of-range values silently where 2.x raises).
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(
                f"contents.{field} holds values outside the range of {datatype}",
                model=model or None,
                tensor=name,
                expected=f"values from {info.min} to {info.max}",
                got=f"values from {int(wide.min())} to {int(wide.max())}",
                hint=f"send values that fit {dtype.name}",
            )
        array = wide.astype(dtype)
    else:
        array = np.array(values, dtype=dtype)
    return array.reshape(shape)


# ----------------------------------------------------------------------------- responses
def encode_infer_response(
    response_type: Any,
    model_name: str,
    model_version: int | str,
    outputs: Mapping[str, Any],
    *,
    id: str = "",
    parameters: Mapping[str, Any] | None = None,
    only: Iterable[str] | None = None,
    classification: Mapping[str, int] | None = None,
    batched: bool = False,
) -> Any:
    """Build a ``ModelInferResponse`` (``response_type``) with the outputs in ``raw_output_contents``.

    Args:
        response_type: ``service_pb2.ModelInferResponse`` (passed in so this module imports no grpc).
        model_name, model_version, id, parameters: echoed in the response.
        outputs: output name -> array (NumPy, or anything :func:`nbserve.tensors.to_numpy` takes).
        only: restricts and orders the outputs (the request's ``outputs``), as Triton does.
        classification: output -> top-k count: that output becomes Triton's ``"value:index"`` BYTES.
        batched: the model batches, so classification ranks each row of the first dimension.

    Returns:
        The response message.
    """
    names = list(outputs) if only is None else list(only)
    response = response_type(model_name=model_name, model_version=str(model_version), id=id)
    tensors = response.outputs
    raw = response.raw_output_contents
    for name in names:
        array = to_numpy(outputs[name])
        dtype = array.dtype
        if dtype.byteorder == ">":  # the wire is little-endian
            dtype = dtype.newbyteorder("<")
            array = array.astype(dtype)
        if classification and name in classification:
            array = _classify(array, classification[name], batched, None, name)
            dtype = array.dtype
        datatype = _WIRE_BY_NUMPY.get(dtype)
        if datatype is None:
            datatype = triton_dtype(dtype)
        if datatype == "BYTES":
            data = serialize_bytes(array)
        else:
            data = array.tobytes()  # C order, whatever the array's strides
        tensors.add(name=name, datatype=datatype, shape=array.shape)
        raw.append(data)
    if parameters:
        for key, value in parameters.items():
            set_parameter(response.parameters[key], value)
    return response
