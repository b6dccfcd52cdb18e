"""Checks a request's tensors against a model's config, with messages that name the fix.

Shared by direct calls (``RegisteredModel.infer``), the in-process API, HTTP and gRPC, so every path
rejects the same bad inputs with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import InvalidInput
from .tensors import array_library, as_bytes_array, numpy_dtype, shape_matches, triton_dtype

__all__ = ["check_inputs", "request_rows", "InputChecker"]


def _dtype_name(value: Any) -> str:
    try:
        return triton_dtype(value)
    except Exception:
        return str(getattr(value, "dtype", type(value).__name__))


def check_inputs(config: ModelConfig, inputs: Mapping[str, Any], *, version: int | None = None) -> dict[str, Any]:
    """Return the inputs as arrays of the declared dtypes, or raise InvalidInput.

    Python lists and str arrays are converted; anything else must already have the declared dtype
    (casting silently would hide a bug in the caller).
    """
    model = config.name
    declared = {t.name: t for t in config.input}
    if not isinstance(inputs, Mapping):
        raise InvalidInput(
            "inputs must be a dict of arrays by input name",
            model=model,
            version=version,
            expected=sorted(declared),
            got=type(inputs).__name__,
            hint="pass {" + ", ".join(f"'{n}': array" for n in declared) + "}",
        )
    extra = sorted(set(inputs) - set(declared))
    if extra:
        raise InvalidInput(
            f"unexpected input{'s' if len(extra) > 1 else ''} {', '.join(repr(e) for e in extra)}",
            model=model,
            version=version,
            expected=f"inputs {sorted(declared)}",
            got=sorted(inputs),
            hint="send only the model's inputs; see its config with nbserve.models()",
        )
    missing = [n for n, t in declared.items() if n not in inputs and not t.optional]
    if missing:
        raise InvalidInput(
            f"missing input{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}",
            model=model,
            version=version,
            expected=f"inputs {sorted(declared)}",
            got=sorted(inputs),
            hint="add " + ", ".join(f"'{m}'" for m in missing) + " to the request",
        )
    batched = config.max_batch_size > 0
    out: dict[str, Any] = {}
    rows = None
    for name, value in inputs.items():
        spec = declared[name]
        expected_dtype = triton_dtype(spec.data_type)
        array = _as_array(value, expected_dtype)
        got_dtype = _dtype_name(array)
        if got_dtype != expected_dtype:
            cast = (
                f'x.astype("{numpy_dtype(expected_dtype).name}")' if expected_dtype not in ("BYTES", "BF16") else
                "np.array([...], dtype=object) of bytes" if expected_dtype == "BYTES" else "a torch.bfloat16 tensor"
            )
            raise InvalidInput(
                f"has dtype {got_dtype}",
                model=model,
                version=version,
                tensor=name,
                expected=expected_dtype,
                got=got_dtype,
                hint=f"cast with {cast}",
            )
        shape = tuple(array.shape)
        dims = list(spec.dims)
        full = [-1, *dims] if batched else dims
        if not shape_matches(full, shape):
            raise InvalidInput(
                "has the wrong shape",
                model=model,
                version=version,
                tensor=name,
                expected=f"{full} (-1 is any size{'; the first dimension is the batch' if batched else ''})",
                got=list(shape),
                hint=(f"reshape to [batch, {', '.join(map(str, dims))}], e.g. x[None] for one item"
                      if batched else f"reshape to {dims}"),
            )
        if batched:
            if shape[0] > config.max_batch_size:
                raise InvalidInput(
                    "batch is larger than the model's max_batch_size",
                    model=model,
                    version=version,
                    tensor=name,
                    expected=f"at most {config.max_batch_size} rows",
                    got=shape[0],
                    hint="split the request, or register with a larger max_batch_size",
                )
            if shape[0] == 0:
                raise InvalidInput("has an empty batch", model=model, version=version, tensor=name,
                                   hint="send at least one row")
            if rows is not None and shape[0] != rows:
                raise InvalidInput(
                    "inputs disagree on the batch size",
                    model=model,
                    version=version,
                    tensor=name,
                    expected=rows,
                    got=shape[0],
                    hint="every input needs the same first dimension",
                )
            rows = shape[0]
        out[name] = array
    return out


def _as_array(value: Any, expected_dtype: str) -> Any:
    if array_library(value) != "numpy" or (isinstance(value, np.ndarray) and value.dtype.kind not in "USO"):
        return value
    if isinstance(value, np.ndarray):
        return as_bytes_array(value) if expected_dtype == "BYTES" else value
    if expected_dtype == "BYTES":
        return as_bytes_array(value)
    array = np.asarray(value)
    if array.dtype.kind in "iuf b" and expected_dtype not in ("BYTES", "BF16"):
        # Python lists carry no dtype: take the declared one when the values fit it.
        target = numpy_dtype(expected_dtype)
        if array.dtype.kind == target.kind or (array.dtype.kind in "iub" and target.kind in "iuf"):
            return array.astype(target)
    return array


def request_rows(config: ModelConfig, inputs: Mapping[str, Any]) -> int:
    """Rows a request contributes to a batch (1 for models that do not batch)."""
    if config.max_batch_size <= 0 or not inputs:
        return 1
    return int(next(iter(inputs.values())).shape[0])


class InputChecker:
    """``check_inputs`` with a fast path for the common request: a dict of NumPy arrays of the
    declared dtypes and shapes. Anything else takes the full check, which converts or explains."""

    def __init__(self, config: ModelConfig, version: int | None = None) -> None:
        self.config = config
        self.version = version
        self.max_batch_size = config.max_batch_size
        batch = [-1] if config.max_batch_size > 0 else []
        self._batch_dims = len(batch)  # where the dims the config fixes start in a request's shape
        self._specs = []
        for t in config.input:
            dtype_name = triton_dtype(t.data_type)
            dtype = np.dtype(object) if dtype_name == "BYTES" else (
                None if dtype_name == "BF16" else numpy_dtype(dtype_name))
            dims = tuple(batch + list(t.dims))
            # Non-batch dims with no -1 are checked with one tuple comparison (the common case).
            tail = tuple(dims[len(batch):]) if -1 not in t.dims else None
            fixed = [(i, d) for i, d in enumerate(dims) if d != -1]
            self._specs.append((t.name, dtype, len(dims), tail, fixed))
        self._all_required = all(not t.optional for t in config.input)
        # Shape key of every valid request when no non-batch dim is -1: one shared tuple, so batch
        # formation compares keys by identity.
        self._fixed_key = (tuple(spec[3] for spec in self._specs)
                           if self.max_batch_size > 0 and all(spec[3] is not None for spec in self._specs) else None)
        if self._fixed_key is not None and len(self._specs) == 1 and self._all_required and self._specs[0][1] is not None:
            # The most common model of all (one batched tensor, fixed feature dims): checked in a few
            # comparisons on every request. Anything that fails them takes the general check.
            self._name, self._dtype, self._ndim, self._tail = self._specs[0][:4]
            self.prepare = self._prepare_single  # type: ignore[method-assign]

    def __call__(self, inputs: Any) -> dict[str, Any]:
        return self.prepare(inputs)[0]

    def _prepare_single(self, inputs: Any) -> tuple[dict[str, Any], int, tuple[Any, ...]]:
        if type(inputs) is dict and len(inputs) == 1:
            value = inputs.get(self._name)
            if type(value) is np.ndarray and value.ndim == self._ndim and (
                value.dtype is self._dtype or value.dtype == self._dtype
            ):
                shape = value.shape
                if shape[1:] == self._tail and 0 < shape[0] <= self.max_batch_size:
                    return inputs, shape[0], self._fixed_key
        return InputChecker.prepare(self, inputs)

    def prepare(self, inputs: Any) -> tuple[dict[str, Any], int, tuple[Any, ...]]:
        """Check a request; return its inputs, its rows and its shape key.

        Two requests with equal shape keys have the same inputs with the same non-batch shapes, so
        they can share a batch. Rows are 1 and the key is empty for a model that does not batch.
        """
        if type(inputs) is dict and self._all_required and len(inputs) == len(self._specs):
            batched = self.max_batch_size > 0
            rows = None
            key = []
            for name, dtype, ndim, tail, fixed in self._specs:
                value = inputs.get(name)
                if type(value) is not np.ndarray or value.dtype != dtype or value.ndim != ndim:
                    break
                shape = value.shape
                if (shape[self._batch_dims:] != tail) if tail is not None else any(shape[i] != d for i, d in fixed):
                    break
                if batched:
                    if rows is None:
                        rows = shape[0]
                    if shape[0] != rows or not 0 < rows <= self.max_batch_size:
                        break
                    key.append(shape[1:])
            else:
                if not batched:
                    return inputs, 1, ()
                return inputs, rows, self._fixed_key or tuple(key)
        checked = check_inputs(self.config, inputs, version=self.version)
        if self.max_batch_size <= 0:
            return checked, 1, ()
        first = next(iter(checked.values()), None)
        rows = int(first.shape[0]) if first is not None else 1
        key = tuple(tuple(checked[name].shape[1:]) if name in checked else None for name, *_ in self._specs)
        return checked, rows, key
