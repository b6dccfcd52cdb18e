"""The KServe v2 inference protocol over HTTP, with Triton's binary tensor data extension.

A pure codec: bytes in, NumPy arrays out, and back. It knows nothing of aiohttp or of the core, so
the HTTP frontend, the benchmark client and the tests share one implementation of the wire format.

Wire format (what ``tritonclient.http`` and perf_analyzer send and expect)::

    POST /v2/models/{model}/infer
    Inference-Header-Content-Length: <n>          only when binary tensors follow the JSON
    {"id": "7", "parameters": {"binary_data_output": true, "priority": 1, "timeout": 5000},
     "inputs":  [{"name": "x", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": 32}},
                 {"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]}],
     "outputs": [{"name": "y", "parameters": {"binary_data": true}}, {"name": "p", "parameters": {"classification": 3}}]}
    <32 raw little-endian bytes of x>

The first ``n`` bytes of the body are the JSON header; each input with
``parameters.binary_data_size`` takes that many bytes, in input order, from the rest. BYTES tensors
in binary form are each element as a 4-byte little-endian length followed by its bytes. Responses
mirror this: outputs asked for in binary carry ``parameters.binary_data_size`` and their bytes
follow the JSON header, whose length goes in the response's ``Inference-Header-Content-Length``.
JSON ``data`` is row-major, flat or nested. Every problem raises :class:`~nbserve.errors.InvalidInput`
with a message that names the tensor, what was expected, what came and how to fix it.

>>> import numpy as np
>>> body, header_length = encode_request({"x": np.ones((1, 2), "float32")}, binary=True)
>>> request = decode_request(body, header_length)
>>> request.inputs["x"].tolist(), request.binary_data_output
([[1.0, 1.0]], True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

from ..errors import InvalidInput
from ..tensors import DTYPES, deserialize_bytes, serialize_bytes, to_numpy, triton_dtype

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "DecodedResponse",
    "decode_request",
    "encode_response",
    "encode_request",
    "decode_response",
    "parse_header_length",
    "error_body",
    "dumps",
]

#: The HTTP header that carries the byte length of the JSON part of a body with binary tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"

_NUMPY_OPTION = orjson.OPT_SERIALIZE_NUMPY
# Request parameters Triton reads itself; everything else is passed to the model as a parameter.
_RESERVED_PREFIX = "triton_"
_VALID_TYPES = ", ".join(DTYPES)
_BINARY_HINT = (
    "with binary tensors, set the HTTP header 'Inference-Header-Content-Length' to the byte length of "
    "the JSON header, give each binary input parameters.binary_data_size, and append the tensors' "
    "bytes after the JSON in input order (tritonclient does this for set_data_from_numpy(x, binary_data=True))"
)


def dumps(value: Any) -> bytes:
    """JSON bytes (orjson; NumPy arrays and scalars are serialized natively)."""
    return orjson.dumps(value, option=_NUMPY_OPTION)


def _loads(data: memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # rapidjson-based clients (tritonclient) write NaN and Infinity literals, which orjson
        # refuses; the standard library reads them (this path only runs for such bodies).
        import json

        return json.loads(bytes(data))


def error_body(message: str) -> bytes:
    """Triton's error body: ``{"error": "<message>"}``."""
    return orjson.dumps({"error": message})


# ----------------------------------------------------------------------------- data types
_WIRE: dict[str, np.dtype] = {}  # wire name -> little-endian NumPy dtype (BF16 added on first use)
for _name, _row in DTYPES.items():
    if _row.numpy is not None and _name != "BYTES":
        _WIRE[_name] = _row.numpy.newbyteorder("<") if _row.numpy.itemsize > 1 else _row.numpy
_BY_DTYPE: dict[np.dtype, str] = {dtype: name for name, dtype in _WIRE.items()}


def _wire_dtype(name: str, *, tensor: str, model: str | None) -> np.dtype:
    dtype = _WIRE.get(name)
    if dtype is not None:
        return dtype
    if name == "BF16":
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes ships with tritonclient
            raise InvalidInput(
                "BF16 tensors need the ml_dtypes package on the server",
                model=model,
                tensor=tensor,
                hint="pip install ml_dtypes, or send FP32",
            ) from None
        dtype = np.dtype(ml_dtypes.bfloat16)
        _WIRE["BF16"] = dtype
        _BY_DTYPE[dtype] = "BF16"
        return dtype
    raise InvalidInput(  # BYTES never reaches here
        f"unknown datatype {name!r}", model=model, tensor=tensor, expected=f"one of {_VALID_TYPES}", got=name
    )


def _output_dtype_name(array: np.ndarray) -> str:
    name = _BY_DTYPE.get(array.dtype)
    if name is None:
        name = triton_dtype(array.dtype)
    return name


# ----------------------------------------------------------------------------- requests
class InferRequest:
    """A decoded inference request: what the HTTP frontend passes to ``InferenceCore.infer``.

    Attributes:
        inputs: NumPy arrays by input name (BYTES: object arrays of bytes).
        id: the request id, echoed in the response.
        outputs: names of the requested outputs, in request order; None asks for all of them.
        binary_outputs: per requested output, True for binary data, False for JSON (a listed
            output without ``parameters.binary_data`` is JSON, as in Triton).
        classification: per requested output, the top-k count of Triton's classification extension.
        binary_data_output: the format of outputs the request does not list.
        priority, timeout_us: Triton's ``priority`` and ``timeout`` request parameters.
        parameters: every other request parameter (sequence_id, sequence_start, custom ones).
    """

    __slots__ = ("inputs", "id", "outputs", "binary_outputs", "classification", "binary_data_output",
                 "priority", "timeout_us", "parameters")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        id: str = "",
        outputs: list[str] | None = None,
        binary_outputs: dict[str, bool] | None = None,
        classification: dict[str, int] | None = None,
        binary_data_output: bool = False,
        priority: int = 0,
        timeout_us: int = 0,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self.inputs = inputs
        self.id = id
        self.outputs = outputs
        # Empty option dicts are shared and never mutated: decoding builds new ones when needed.
        self.binary_outputs = binary_outputs if binary_outputs is not None else _NO_OPTIONS
        self.classification = classification if classification is not None else _NO_OPTIONS
        self.binary_data_output = binary_data_output
        self.priority = priority
        self.timeout_us = timeout_us
        self.parameters = parameters if parameters is not None else _NO_OPTIONS

    def wants_binary(self, name: str) -> bool:
        """True when output ``name`` goes back as binary tensor data."""
        flag = self.binary_outputs.get(name)
        return self.binary_data_output if flag is None else flag

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"InferRequest({fields})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InferRequest) and all(
            getattr(self, k) is getattr(other, k) or getattr(self, k) == getattr(other, k)
            for k in self.__slots__ if k != "inputs"
        ) and self.inputs.keys() == other.inputs.keys()


_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})
_JSON_ONLY = InferRequest({})


def parse_header_length(value: str | None, body_length: int, *, model: str | None = None) -> int | None:
    """Validate an ``Inference-Header-Content-Length`` header value against the body length."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        length = -1
    if length < 0 or length > body_length:
        raise InvalidInput(
            f"the {HEADER_LENGTH} header must be the byte length of the JSON header inside the body",
            model=model,
            expected=f"an integer from 0 to {body_length} (the body's length)",
            got=repr(value),
            hint=_BINARY_HINT,
        )
    return length


def decode_request(
    body: bytes | bytearray | memoryview, header_length: int | None = None, *, model: str | None = None
) -> InferRequest:
    """Decode an inference request body into NumPy inputs and response options.

    Args:
        body: the whole HTTP body (already decompressed).
        header_length: the ``Inference-Header-Content-Length`` value (see :func:`parse_header_length`);
            None when the body is JSON only.
        model: the model name, used in error messages.

    Returns:
        An :class:`InferRequest`. Binary inputs are zero-copy views of ``body`` (writable when
        ``body`` is a bytearray, read-only for bytes).

    Raises:
        InvalidInput: malformed JSON, unknown datatype, shape/data mismatch, wrong binary sizes.
    """
    size = len(body)
    has_header = header_length is not None
    if header_length is None:
        header_length = size
    elif header_length == 0:
        raise InvalidInput(
            f"{HEADER_LENGTH}: 0 (a raw binary body without a JSON header) is not supported",
            model=model,
            hint="send the JSON inference header first and put its byte length in " + HEADER_LENGTH,
        )
    view = memoryview(body)
    try:
        header = _loads(view[:header_length] if header_length != size else body)
    except ValueError as exc:
        hint = (
            f"send the JSON inference request as the body; when binary tensors follow the JSON, set the "
            f"{HEADER_LENGTH} header to the JSON's byte length"
            if not has_header
            else f"{HEADER_LENGTH} is {header_length}: it must be exactly the JSON header's byte length"
        )
        raise InvalidInput(f"the request body is not valid JSON ({exc})", model=model, hint=hint) from None
    if type(header) is not dict:
        raise InvalidInput(
            "the inference request must be a JSON object",
            model=model,
            expected='{"inputs": [...]}',
            got=type(header).__name__,
            hint='send {"inputs": [{"name": ..., "datatype": ..., "shape": [...], "data": [...]}]}',
        )

    specs = header.get("inputs")
    if type(specs) is not list:
        raise InvalidInput(
            "the request has no 'inputs' list",
            model=model,
            expected='"inputs": [{"name", "datatype", "shape", "data" or parameters.binary_data_size}, ...]',
            got=type(specs).__name__ if specs is not None else "nothing",
            hint="add the model's inputs to the request",
        )
    offset = header_length
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        # Fast path: a well-formed binary input of a fixed-size type (what perf_analyzer and
        # tritonclient send by default). Anything else, and every error, takes _read_input.
        if type(spec) is dict and has_header and "data" not in spec:
            name = spec.get("name")
            dtype = _WIRE.get(spec.get("datatype"))  # type: ignore[arg-type]
            shape = spec.get("shape")
            params = spec.get("parameters")
            if dtype is not None and type(name) is str and type(shape) is list and type(params) is dict \
                    and len(params) == 1 and name not in inputs:
                nbytes = params.get("binary_data_size")
                count = 1
                for d in shape:
                    if type(d) is not int or d < 0:
                        count = -1
                        break
                    count *= d
                if type(nbytes) is int and count >= 0 and nbytes == count * dtype.itemsize \
                        and offset + nbytes <= size and name:
                    inputs[name] = np.frombuffer(body, dtype, count, offset).reshape(shape)
                    offset += nbytes
                    continue
        name, array, offset = _read_input(spec, view, offset, has_header, model)
        if name in inputs:
            raise InvalidInput(
                "input appears twice in the request", model=model, tensor=name, hint="send each input once"
            )
        inputs[name] = array
    if offset != size:
        raise InvalidInput(
            "the body has more binary data than the inputs declare",
            model=model,
            expected=f"{offset - header_length} bytes after the JSON header (the sum of binary_data_size)",
            got=f"{size - header_length} bytes",
            hint=f"check each input's binary_data_size and the {HEADER_LENGTH} header",
        )

    request = InferRequest(inputs)
    if len(header) > 1:
        request_id = header.get("id")
        if request_id is not None:
            if type(request_id) is not str:
                raise InvalidInput("'id' must be a string", model=model, got=repr(request_id), hint='send "id": "42"')
            request.id = request_id
        parameters = header.get("parameters")
        if parameters:
            _read_parameters(parameters, request, model)
        outputs = header.get("outputs")
        if outputs is not None:
            _read_outputs(outputs, request, model)
    return request


def _read_parameters(parameters: Any, request: InferRequest, model: str | None) -> None:
    if not isinstance(parameters, dict):
        raise InvalidInput(
            "request 'parameters' must be a JSON object", model=model, got=type(parameters).__name__
        )
    for key, value in parameters.items():
        if key == "binary_data_output":
            request.binary_data_output = _bool_parameter(key, value, model)
        elif key == "priority":
            request.priority = _uint_parameter(key, value, model, "0 for the model's default priority level")
        elif key == "timeout":
            request.timeout_us = _uint_parameter(key, value, model, "the timeout in microseconds, 0 for none")
        elif key.startswith(_RESERVED_PREFIX):
            raise InvalidInput(
                f"parameter '{key}': keys starting with '{_RESERVED_PREFIX}' are reserved for Triton",
                model=model,
                hint="rename the parameter",
            )
        elif isinstance(value, (str, int, float, bool)):
            if request.parameters is _NO_OPTIONS:
                request.parameters = {}
            request.parameters[key] = value
        else:
            raise InvalidInput(
                f"parameter '{key}' has invalid type",
                model=model,
                expected="a string, integer, float or boolean",
                got=type(value).__name__,
                hint="send lists or objects as a JSON string",
            )


def _bool_parameter(key: str, value: Any, model: str | None) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter '{key}' must be true or false", model=model, got=repr(value))
    return value


def _uint_parameter(key: str, value: Any, model: str | None, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"parameter '{key}' must be a non-negative integer", model=model, got=repr(value), hint=f"send {meaning}"
        )
    return value


def _read_input(
    spec: Any, view: memoryview, offset: int, has_header: bool, model: str | None
) -> tuple[str, np.ndarray, int]:
    if not isinstance(spec, dict):
        raise InvalidInput(
            "each entry of 'inputs' must be a JSON object",
            model=model,
            expected='{"name", "datatype", "shape", "data"}',
            got=repr(spec)[:80],
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(
            "an input has no 'name'", model=model, got=repr(name), hint="give every input its model input name"
        )
    datatype = spec.get("datatype")
    if datatype not in DTYPES:
        raise InvalidInput(
            f"unknown datatype {datatype!r}",
            model=model,
            tensor=name,
            expected=f"one of {_VALID_TYPES}",
            got=repr(datatype),
            hint="use the datatype from the model metadata (GET /v2/models/<model>)",
        )
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(
            "'shape' must be a list of non-negative integers",
            model=model,
            tensor=name,
            got=repr(shape),
            hint="send the tensor's full shape, batch dimension first, e.g. [1, 4]",
        )
    count = 1
    for d in shape:
        count *= d

    params = spec.get("parameters")
    binary_size = None
    if params:
        if not isinstance(params, dict):
            raise InvalidInput("input 'parameters' must be a JSON object", model=model, tensor=name)
        binary_size = params.get("binary_data_size")
        if "shared_memory_region" in params:
            raise InvalidInput(
                "shared-memory tensors are not supported by this server",
                model=model,
                tensor=name,
                hint="send the tensor in the body (set_data_from_numpy) instead of set_shared_memory",
            )
    has_data = "data" in spec
    if (binary_size is None) == (not has_data):
        raise InvalidInput(
            "input must set exactly one of 'data' and parameters.binary_data_size",
            model=model,
            tensor=name,
            got="both" if has_data else "neither",
            hint="send JSON values in 'data', or binary bytes after the JSON header with binary_data_size",
        )

    if binary_size is not None:
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
            raise InvalidInput(
                "parameters.binary_data_size must be a non-negative integer",
                model=model,
                tensor=name,
                got=repr(binary_size),
            )
        if binary_size and not has_header:
            raise InvalidInput(
                f"input is sent as binary data but the request has no {HEADER_LENGTH} header",
                model=model,
                tensor=name,
                hint=_BINARY_HINT,
            )
        end = offset + binary_size
        if end > len(view):
            raise InvalidInput(
                "the body ends before this input's binary data",
                model=model,
                tensor=name,
                expected=f"{binary_size} bytes (binary_data_size) starting at byte {offset}",
                got=f"{len(view) - offset} bytes left",
                hint=f"check binary_data_size and the {HEADER_LENGTH} header",
            )
        if datatype == "BYTES":
            array = deserialize_bytes(view[offset:end], shape, tensor=name, model=model or "")
        else:
            dtype = _wire_dtype(datatype, tensor=name, model=model)
            if binary_size != count * dtype.itemsize:
                raise InvalidInput(
                    "binary_data_size does not match the shape and datatype",
                    model=model,
                    tensor=name,
                    expected=f"{count * dtype.itemsize} bytes for {datatype} {shape}",
                    got=f"{binary_size} bytes",
                    hint="send shape = the array's shape and its raw little-endian bytes (x.tobytes())",
                )
            array = np.frombuffer(view, dtype, count, offset).reshape(shape)
        return name, array, end

    return name, _json_array(spec["data"], datatype, shape, count, name, model), offset


def _json_array(data: Any, datatype: str, shape: list[int], count: int, name: str, model: str | None) -> np.ndarray:
    if datatype == "BYTES":
        flat = _flatten(data)
        out = np.empty(len(flat), dtype=object)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                out[i] = item.encode("utf-8")
            else:
                raise InvalidInput(
                    "BYTES 'data' must hold strings",
                    model=model,
                    tensor=name,
                    got=f"{type(item).__name__} {item!r}"[:80],
                    hint="send text as JSON strings, or raw bytes with binary_data=True",
                )
        array = out
    else:
        dtype = _wire_dtype(datatype, tensor=name, model=model)
        array = _numeric(data, dtype, datatype, name, model)
    if array.size != count:
        raise InvalidInput(
            "'data' does not match 'shape'",
            model=model,
            tensor=name,
            expected=f"{count} values for shape {shape}",
            got=f"{array.size} values",
            hint="send shape = the array's shape and all its values, flat or nested, in row-major order",
        )
    return array.reshape(shape)


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _numeric(data: Any, dtype: np.dtype, datatype: str, name: str, model: str | None) -> np.ndarray:
    kind = dtype.kind
    try:
        if kind in "iub":
            # JSON numbers carry no type: refuse fractions and out-of-range values instead of
            # truncating or wrapping them silently.
            raw = np.asarray(data)
            if raw.dtype.kind == "b" or (raw.dtype.kind in "iu" and kind != "b"):
                if raw.dtype.kind in "iu" and raw.size:
                    info = np.iinfo(dtype)
                    if raw.min() < info.min or raw.max() > info.max:
                        raise OverflowError(f"values outside [{info.min}, {info.max}]")
                return raw.astype(dtype)
            if kind == "b" and raw.dtype.kind in "iu" and (raw.size == 0 or ((raw == 0) | (raw == 1)).all()):
                return raw.astype(dtype)
            if raw.size == 0 and raw.dtype.kind == "f":  # np.asarray([]) is float64
                return raw.astype(dtype)
            if kind != "b" and raw.dtype.kind in "fO" and all(type(v) is int for v in _flatten(data)):
                # Integers NumPy cannot hold in one int64/uint64 array (e.g. [0, 2**63]): let the
                # target dtype decide; out-of-range values raise OverflowError.
                return np.array(data, dtype=dtype)
            raise ValueError(f"got {raw.dtype.name} values")
        return np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        expected = {"b": "true/false", "i": "integers", "u": "non-negative integers"}.get(kind, "numbers")
        raise InvalidInput(
            f"'data' does not hold {datatype} values ({exc})",
            model=model,
            tensor=name,
            expected=f"{expected} that fit {datatype}, in a flat or nested list",
            hint="check the datatype against the model metadata, or send binary data",
        ) from None


def _read_outputs(outputs: Any, request: InferRequest, model: str | None) -> None:
    if not isinstance(outputs, list):
        raise InvalidInput(
            "'outputs' must be a list", model=model, expected='[{"name": ...}]', got=type(outputs).__name__
        )
    names: list[str] = []
    binary_outputs: dict[str, bool] = {}
    classification: dict[str, int] = {}
    for spec in outputs:
        name = spec.get("name") if type(spec) is dict else None
        if type(name) is not str or not name:
            raise InvalidInput(
                "each requested output needs a 'name'",
                model=model,
                got=repr(spec)[:80],
                hint='send "outputs": [{"name": "<output>"}], or leave "outputs" out for all of them',
            )
        if name in binary_outputs:
            raise InvalidInput("output is requested twice", model=model, tensor=name, hint="request it once")
        params = spec.get("parameters")
        binary = False
        if params:
            if type(params) is not dict:
                raise InvalidInput("output 'parameters' must be a JSON object", model=model, tensor=name)
            if "shared_memory_region" in params:
                raise InvalidInput(
                    "shared-memory outputs are not supported by this server",
                    model=model,
                    tensor=name,
                    hint="leave out set_shared_memory; the output comes back in the response body",
                )
            binary = params.get("binary_data", False)
            if type(binary) is not bool:
                raise InvalidInput("parameters.binary_data must be true or false", model=model, tensor=name,
                                   got=repr(binary))
            classes = params.get("classification")
            if classes is not None:
                classification[name] = _uint_parameter("classification", classes, model, "the top-k count")
        binary_outputs[name] = binary
        names.append(name)
    request.outputs = names
    request.binary_outputs = binary_outputs
    if classification:
        request.classification = classification


# ----------------------------------------------------------------------------- responses
def encode_response(
    result: Any,
    request: InferRequest | None = None,
    *,
    batched: bool = False,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an inference result as a v2 response body.

    Args:
        result: an ``InferResult`` (``model_name``, ``model_version``, ``outputs``, ``id``, ``parameters``).
        request: the decoded request: its output formats and classification counts. None sends
            every output as JSON, as Triton does for a request without options.
        batched: the model batches (``max_batch_size > 0``): classification ranks each batch row.
        labels: optional class labels per output for classification (``"value:index:label"``).

    Returns:
        ``(body, header_length)``: ``header_length`` is the JSON header's length when binary
        tensor data follows it (send it as ``Inference-Header-Content-Length`` with content type
        ``application/octet-stream``), or None for a JSON-only body.
    """
    outputs_json = []
    buffers: list[Any] = []
    if request is None:
        request = _JSON_ONLY
    classification = request.classification
    binary_outputs = request.binary_outputs
    binary_default = request.binary_data_output
    for name, value in result.outputs.items():
        array = value if type(value) is np.ndarray else to_numpy(value)
        datatype = _BY_DTYPE.get(array.dtype)
        if datatype is None:  # BYTES, big-endian, or a type not seen yet
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            datatype = _output_dtype_name(array)
        if classification and name in classification:
            array = _classify(array, classification[name], batched, labels.get(name) if labels else None, name)
            datatype = "BYTES"
        binary = binary_outputs.get(name)
        if binary if binary is not None else binary_default:
            if datatype == "BYTES":
                raw: Any = serialize_bytes(array)
                nbytes = len(raw)
            else:
                nbytes = array.nbytes
                # Small tensors: one C-level copy; large ones: a view, copied once by the join.
                raw = array.tobytes() if nbytes <= 65536 else np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
            if nbytes:
                buffers.append(raw)
            outputs_json.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                                 "parameters": {"binary_data_size": nbytes}})
        else:
            outputs_json.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                                 "data": _json_data(array, datatype, name)})

    if result.id:
        response: dict[str, Any] = {"id": result.id, "model_name": result.model_name,
                                    "model_version": str(result.model_version)}
    else:
        response = {"model_name": result.model_name, "model_version": str(result.model_version)}
    if result.parameters:
        response["parameters"] = result.parameters
    response["outputs"] = outputs_json
    header = orjson.dumps(response, option=_NUMPY_OPTION)
    if not buffers:
        return header, None
    buffers.insert(0, header)
    return b"".join(buffers), len(header)


def _json_data(array: np.ndarray, datatype: str, name: str) -> Any:
    if datatype == "BYTES":
        out = []
        for item in array.reshape(-1):
            if isinstance(item, str):
                out.append(item)
                continue
            try:
                out.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(
                    "output holds bytes that are not UTF-8 text, which JSON cannot carry",
                    tensor=name,
                    hint="request it as binary data: InferRequestedOutput(name, binary_data=True)",
                ) from None
        return out
    if datatype == "BF16":
        array = array.astype(np.float32)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        # orjson writes NaN and +-inf as null; tritonclient (rapidjson) reads the literals.
        import json

        return orjson.Fragment(json.dumps(array.reshape(-1).tolist()))
    return np.ascontiguousarray(array).reshape(-1)


def _classify(array: np.ndarray, k: int, batched: bool, labels: Sequence[str] | None, name: str) -> np.ndarray:
    """Triton's classification extension: top-k ``"value:index[:label]"`` strings per batch row."""
    if array.dtype.kind not in "iuf" or array.dtype.itemsize == 0 or _output_dtype_name(array) in ("FP16", "BF16"):
        raise InvalidInput(
            f"classification is not available for {_output_dtype_name(array)} outputs",
            tensor=name,
            expected="an integer, FP32 or FP64 output",
            hint="leave out class_count for this output",
        )
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    out = np.empty((rows.shape[0], k), dtype=object)
    is_float = array.dtype.kind == "f"
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for j, index in enumerate(order):
            value = row[index]
            text = f"{value:f}" if is_float else str(int(value))
            text = f"{text}:{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[r, j] = text.encode()
    return out if batched and array.ndim else out.reshape(k)


# ----------------------------------------------------------------------------- the client side
def encode_request(
    inputs: Mapping[str, Any],
    *,
    binary: bool = True,
    outputs: Sequence[str] | None = None,
    binary_outputs: bool = True,
    request_id: str = "",
    priority: int = 0,
    timeout_us: int = 0,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode a request as ``tritonclient.http`` does; returns ``(body, header_length or None)``.

    BYTES inputs may be object arrays of bytes/str or str/bytes arrays; BF16 needs binary form.
    Without ``outputs`` the request asks for every output, in binary form when ``binary_outputs``.
    """
    header: dict[str, Any] = {}
    if request_id:
        header["id"] = request_id
    params: dict[str, Any] = dict(parameters or {})
    if priority:
        params["priority"] = priority
    if timeout_us:
        params["timeout"] = timeout_us
    if outputs is None:
        params["binary_data_output"] = binary_outputs
    specs, buffers = [], []
    for name, value in inputs.items():
        array = to_numpy(value)
        datatype = _output_dtype_name(array) if array.dtype.kind not in "USO" else "BYTES"
        spec: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            if datatype == "BYTES":
                raw: Any = serialize_bytes(array)
            else:
                raw = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).tobytes()
            spec["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        elif datatype == "BF16":
            raise InvalidInput("BF16 tensors must be sent as binary data", tensor=name, hint="use binary=True")
        else:
            spec["data"] = _json_data(array, datatype, name)
        specs.append(spec)
    header["inputs"] = specs
    if outputs is not None:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs]
    if params:
        header["parameters"] = params
    json_bytes = orjson.dumps(header, option=_NUMPY_OPTION)
    if not binary:
        return json_bytes, None
    return b"".join([json_bytes, *buffers]), len(json_bytes)


@dataclasses.dataclass(slots=True)
class DecodedResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)


def decode_response(body: bytes | memoryview, header_length: int | None = None) -> DecodedResponse:
    """Decode a v2 response body (JSON or JSON + binary tensors) into NumPy outputs."""
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    header = _loads(view[:header_length])
    if "error" in header and "outputs" not in header:
        raise InvalidInput(f"the server answered with an error: {header['error']}")
    offset = header_length
    outputs: dict[str, np.ndarray] = {}
    for spec in header.get("outputs", []):
        name, datatype, shape = spec["name"], spec["datatype"], spec["shape"]
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunk = view[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                outputs[name] = deserialize_bytes(chunk, shape, tensor=name)
            else:
                dtype = _wire_dtype(datatype, tensor=name, model=header.get("model_name"))
                outputs[name] = np.frombuffer(chunk, dtype).reshape(shape)
        else:
            count = int(np.prod(shape)) if shape else 1
            outputs[name] = _json_array(spec["data"], datatype, shape, count, name, header.get("model_name"))
    return DecodedResponse(
        model_name=header.get("model_name", ""),
        model_version=header.get("model_version", ""),
        outputs=outputs,
        id=header.get("id", ""),
        parameters=header.get("parameters") or {},
    )

