"""The tensor contract: data types, tensor specs, batch merge/split and array interchange.

One table maps every Triton data type between its four spellings: the KServe v2 wire name
(``"FP32"``), the model-config enum (``TYPE_FP32``), NumPy and PyTorch. Batch semantics are
Triton's: when a model's ``max_batch_size`` > 0 the leading dimension of every tensor is the batch
and a spec's ``dims`` exclude it; ``-1`` is a variable dimension.

Merge and split work on NumPy, CuPy and torch arrays without importing either framework: device
arrays stay on their device, and DLPack is the interchange format between libraries.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError, InvalidInput

__all__ = [
    "DataType",
    "DTYPES",
    "TensorSpec",
    "triton_dtype",
    "numpy_dtype",
    "config_dtype",
    "torch_dtype",
    "array_library",
    "merge",
    "split",
    "split_rows",
    "to_numpy",
    "from_dlpack",
    "serialize_bytes",
    "deserialize_bytes",
    "as_bytes_array",
    "to_bytes",
    "shape_matches",
]


@dataclasses.dataclass(frozen=True)
class DataType:
    name: str  # KServe v2 wire name, e.g. "FP32"
    numpy: np.dtype | None  # None where NumPy has no such type (BF16)
    torch: str  # attribute of the torch module, e.g. "float32"
    itemsize: int  # bytes per element; 0 for variable-length BYTES

    @property
    def config_name(self) -> str:
        """The model-config enum name; Triton calls BYTES ``TYPE_STRING`` in configs."""
        return "TYPE_STRING" if self.name == "BYTES" else f"TYPE_{self.name}"


def _row(name: str, numpy: Any, torch: str, itemsize: int) -> DataType:
    return DataType(name, np.dtype(numpy) if numpy is not None else None, torch, itemsize)


DTYPES: dict[str, DataType] = {
    row.name: row
    for row in (
        _row("BOOL", np.bool_, "bool", 1),
        _row("UINT8", np.uint8, "uint8", 1),
        _row("UINT16", np.uint16, "uint16", 2),
        _row("UINT32", np.uint32, "uint32", 4),
        _row("UINT64", np.uint64, "uint64", 8),
        _row("INT8", np.int8, "int8", 1),
        _row("INT16", np.int16, "int16", 2),
        _row("INT32", np.int32, "int32", 4),
        _row("INT64", np.int64, "int64", 8),
        _row("FP16", np.float16, "float16", 2),
        _row("FP32", np.float32, "float32", 4),
        _row("FP64", np.float64, "float64", 8),
        _row("BF16", None, "bfloat16", 2),
        _row("BYTES", np.object_, "", 0),
    )
}
_BY_NUMPY = {row.numpy: row.name for row in DTYPES.values() if row.numpy is not None}
_BY_NUMPY[np.dtype("S")] = "BYTES"
_BY_NUMPY[np.dtype("U")] = "BYTES"
_BY_TORCH = {row.torch: row.name for row in DTYPES.values() if row.torch}


def triton_dtype(value: Any) -> str:
    """Return the v2 wire name ("FP32") for any spelling of a data type.

    Accepts a wire name, a config name (``"TYPE_FP32"``) or enum number, a NumPy dtype or type,
    a torch dtype, ``str``/``bytes`` (BYTES), or an array (its dtype).

    >>> triton_dtype("TYPE_STRING"), triton_dtype(np.float32), triton_dtype(np.zeros(2, "int8"))
    ('BYTES', 'FP32', 'INT8')
    """
    if isinstance(value, np.ndarray):
        value = value.dtype
    if isinstance(value, np.dtype):
        found = _BY_NUMPY.get(value)
        return found if found is not None else _numpy_name(value)
    if isinstance(value, str):
        upper = value.upper()
        if upper.startswith("TYPE_"):
            upper = "BYTES" if upper == "TYPE_STRING" else upper[5:]
        if upper == "STRING":
            upper = "BYTES"
        if upper in DTYPES:
            return upper
        try:
            return _numpy_name(np.dtype(value))
        except TypeError:
            pass
        raise ConfigError(
            f"unknown data type {value!r}",
            expected="one of " + ", ".join(DTYPES),
            hint='use a Triton name such as "FP32" or a NumPy dtype such as "float32"',
        )
    if isinstance(value, int) and not isinstance(value, bool):
        from ._proto import model_config_pb2

        mc = model_config_pb2()

        return triton_dtype(mc.DataType.Name(value))
    if value is str or value is bytes:
        return "BYTES"
    module = type(value).__module__
    if module.startswith("torch"):
        name = str(value).removeprefix("torch.")
        if name in _BY_TORCH:
            return _BY_TORCH[name]
    if hasattr(value, "dtype") and not isinstance(value, (type, np.dtype)):
        return triton_dtype(value.dtype)
    try:
        return _numpy_name(np.dtype(value))
    except TypeError as exc:
        raise ConfigError(f"unknown data type {value!r}", hint='use a Triton name such as "FP32"') from exc


def _numpy_name(dtype: np.dtype) -> str:
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    if dtype.name == "bfloat16":  # ml_dtypes' bfloat16, when a library registered it
        return "BF16"
    try:
        return _BY_NUMPY[dtype]
    except KeyError:
        raise ConfigError(f"NumPy dtype {dtype} has no Triton data type", hint="cast the array first") from None


def numpy_dtype(name: Any) -> np.dtype:
    """NumPy dtype for a Triton type; BF16 needs ``ml_dtypes`` (raises when absent)."""
    row = DTYPES[triton_dtype(name)]
    if row.numpy is not None:
        return row.numpy
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        raise ConfigError(
            "NumPy has no bfloat16",
            tensor=None,
            hint="pass torch tensors for BF16, or pip install ml_dtypes",
        ) from None


def config_dtype(name: Any) -> int:
    """The ``model_config_pb2.DataType`` enum number for a Triton type."""
    from ._proto import model_config_pb2

    mc = model_config_pb2()

    return mc.DataType.Value(DTYPES[triton_dtype(name)].config_name)


def torch_dtype(name: Any) -> Any:
    row = DTYPES[triton_dtype(name)]
    if not row.torch:
        raise ConfigError("torch has no tensor type for BYTES", hint="keep text as NumPy object arrays")
    from .errors import require

    return getattr(require("torch", "torch"), row.torch)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """A named tensor: ``dims`` exclude the batch dimension when the model batches.

    >>> TensorSpec(name="x", dims=(4,), dtype="float32")
    TensorSpec(name='x', dims=(4,), dtype='FP32', optional=False)
    """

    name: str
    dims: tuple[int, ...]
    dtype: str
    optional: bool = False

    def __init__(self, name: str, dims: Sequence[int] = (-1,), dtype: Any = "FP32", *, optional: bool = False):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tensor name must be a non-empty string, got {name!r}")
        try:
            dims = tuple(int(d) for d in dims)
        except (TypeError, ValueError):
            raise ConfigError("dims must be a sequence of integers", tensor=name, got=repr(dims)) from None
        for d in dims:
            if d < -1 or d == 0:
                raise ConfigError(
                    "every dimension must be positive or -1 (variable)",
                    tensor=name,
                    got=list(dims),
                    hint="use -1 for a dimension whose size varies",
                )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "dtype", triton_dtype(dtype))
        object.__setattr__(self, "optional", bool(optional))

    def shape_text(self, batched: bool) -> str:
        return str([-1, *self.dims] if batched else list(self.dims))


def shape_matches(dims: Sequence[int], shape: Sequence[int]) -> bool:
    """True when ``shape`` fits ``dims`` (-1 matches any size)."""
    return len(dims) == len(shape) and all(d == -1 or d == s for d, s in zip(dims, shape))


# ----------------------------------------------------------------------------- array libraries
def array_library(x: Any) -> str:
    """'numpy', 'cupy' or 'torch', from the array's type, without importing anything."""
    module = type(x).__module__.split(".")[0]
    if module in ("cupy", "torch"):
        return module
    if module == "cudf":
        return "cupy"
    return "numpy"


def merge(arrays: Sequence[Any]) -> Any:
    """Concatenate request tensors along the batch axis, on their own library and device."""
    if len(arrays) == 1:
        return arrays[0]
    merged = _merge_contiguous(arrays)
    if merged is not None:
        return merged
    library = array_library(arrays[0])
    if library == "torch":
        import torch

        return torch.cat(list(arrays), dim=0)
    if library == "cupy":
        import cupy

        return cupy.concatenate(list(arrays), axis=0)
    return np.concatenate(arrays, axis=0)


_dtype_of = operator.attrgetter("dtype")
_shape_of = operator.attrgetter("shape")


def _merge_contiguous(arrays: Sequence[Any]) -> Any:
    """The common batch (C-contiguous NumPy arrays of one numeric dtype) joined as raw bytes.

    Joining the buffers costs a quarter of ``np.concatenate`` for a batch of one-row requests, and
    the batcher merges every batch. The result is a new writable array. None: use concatenate.
    """
    first = arrays[0]
    if type(first) is not np.ndarray or first.ndim == 0 or first.dtype.kind not in "biufc" or not first.dtype.isnative:
        return None
    dtype = first.dtype
    # One type, one dtype and one non-batch shape for all, checked in C where it can be (a Python
    # loop over the arrays costs more than the join itself).
    if len(set(map(type, arrays))) != 1 or len(set(map(_dtype_of, arrays))) != 1:
        return None
    shapes = set(map(_shape_of, arrays))
    if len(shapes) > 1 and len({shape[1:] for shape in shapes}) != 1:
        return None
    rows = sum(map(len, arrays))
    try:
        data = bytearray().join(arrays)  # raises for an array that is not C-contiguous
    except (BufferError, TypeError, ValueError):
        return None
    shape = (rows, *first.shape[1:])
    if len(data) != dtype.itemsize * math.prod(shape):
        return None
    return np.frombuffer(data, dtype).reshape(shape)


def split_rows(outputs: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    """One dict of outputs per row, for ``count`` one-row requests (views, built in C).

    Iterating a ``(count, 1, ...)`` view yields the per-request views without slicing each one in
    Python; every request gets every output.
    """
    columns = {name: array.reshape((count, 1) + tuple(array.shape[1:])) for name, array in outputs.items()}
    if len(columns) == 1:
        ((name, column),) = columns.items()
        return [{name: row} for row in column]
    return [dict(zip(columns, rows)) for rows in zip(*columns.values())]


def split(array: Any, sizes: Sequence[int]) -> list[Any]:
    """Split a batch back into per-request slices (views where the library allows)."""
    if len(sizes) == 1:
        return [array]
    out, start = [], 0
    for size in sizes:
        out.append(array[start : start + size])
        start += size
    return out


def to_numpy(x: Any) -> np.ndarray:
    """Bring any supported array to host NumPy (copies only when it lives on a device)."""
    if isinstance(x, np.ndarray):
        return x
    library = array_library(x)
    if library == "torch":
        if str(x.dtype) == "torch.bfloat16":
            return x.detach().cpu().view(dtype=__import__("torch").int16).numpy().view(numpy_dtype("BF16"))
        return x.detach().cpu().numpy()
    if library == "cupy":
        return x.get()
    if type(x).__module__.startswith("cudf"):
        return x.to_numpy()
    return np.asarray(x)


def from_dlpack(x: Any, library: str) -> Any:
    """Hand an array to another library through DLPack, staying on its device."""
    if array_library(x) == library:
        return x
    if library == "torch":
        import torch

        return torch.from_dlpack(x)
    if library == "cupy":
        import cupy

        return cupy.from_dlpack(x)
    return np.from_dlpack(x) if hasattr(x, "__dlpack__") and _on_host(x) else to_numpy(x)


def _on_host(x: Any) -> bool:
    device = getattr(x, "__dlpack_device__", None)
    return device is None or device()[0] == 1  # kDLCPU


# ----------------------------------------------------------------------------- BYTES tensors
def to_bytes(item: Any) -> bytes:
    """One BYTES element, as tritonclient encodes it: bytes as they are, anything else as UTF-8 text.

    >>> to_bytes("é"), to_bytes(b"raw"), to_bytes(3)
    (b'\\xc3\\xa9', b'raw', b'3')
    """
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    return str(item).encode("utf-8")  # bytes(3) would be three zero bytes


def as_bytes_array(x: Any) -> np.ndarray:
    """An object array of ``bytes`` from str/bytes arrays or lists (Triton's BYTES)."""
    arr = np.asarray(x, dtype=object) if not isinstance(x, np.ndarray) else x
    if arr.dtype.kind == "U":
        return np.char.encode(arr, "utf-8").astype(object)
    if arr.dtype.kind == "S":
        return arr.astype(object)
    flat = arr.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        out[i] = to_bytes(item)
    return out.reshape(arr.shape)


def serialize_bytes(arr: np.ndarray) -> bytes:
    """Triton's binary BYTES layout: each element as a 4-byte little-endian length then its bytes."""
    parts = []
    for item in np.asarray(arr, dtype=object).reshape(-1):
        data = to_bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, shape: Sequence[int], *, tensor: str = "", model: str = "") -> np.ndarray:
    """Inverse of :func:`serialize_bytes`; raises InvalidInput on a truncated buffer."""
    view = memoryview(buffer)
    count = int(np.prod(shape)) if len(shape) else 1
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(
                "BYTES data ends early",
                model=model or None,
                tensor=tensor or None,
                expected=f"{count} length-prefixed elements",
                got=f"{i} in {len(view)} bytes",
                hint="send each element as a 4-byte little-endian length followed by its bytes",
            )
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                "BYTES element is longer than the data sent",
                model=model or None,
                tensor=tensor or None,
                expected=f"{length} bytes",
                got=f"{len(view) - offset}",
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(
            "BYTES data is longer than its shape",
            model=model or None,
            tensor=tensor or None,
            expected=f"{offset} bytes for shape {list(shape)}",
            got=f"{len(view)} bytes",
        )
    return out.reshape(tuple(shape))
