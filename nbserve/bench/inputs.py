"""Request inputs for a benchmark: generated from the model's signature, or given by the user.

A signature is the KServe v2 model metadata (``{"inputs": [{"name", "datatype", "shape"}]}``): the
in-kernel core, HTTP and gRPC all give it, so the same code builds inputs for nbserve and for a
real Triton. Like perf_analyzer, the generator makes random data once and every request sends it;
give several input dicts to cycle through them. Shapes: the batch dimension (``-1`` first when the
model batches) becomes ``batch_size``; any other ``-1`` must be given in ``shapes`` (perf_analyzer's
``--shape``) or defaults to 1. BYTES inputs get short UTF-8 sentences.

>>> meta = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
...                                 {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]}
>>> [sorted((k, v.shape) for k, v in d.items()) for d in request_inputs(meta, batch_size=2)]
[[('text', (2, 1)), ('x', (2, 4))]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..tensors import as_bytes_array, numpy_dtype, to_numpy, triton_dtype

__all__ = ["request_inputs", "random_tensor", "batched"]

_WORDS = ("the", "model", "reads", "a", "short", "text", "about", "serving", "notebooks", "with", "dynamic",
          "batching", "and", "returns", "scores", "for", "every", "request", "it", "gets")


def batched(metadata: Mapping[str, Any]) -> bool:
    """True when the model's inputs lead with the ``-1`` batch dimension (max_batch_size > 0).

    KServe metadata does not say it directly; Triton and nbserve both put ``-1`` first exactly then.
    A model whose first dimension is variable without batching looks the same, which is why the
    config's ``max_batch_size`` is preferred when the caller has it.
    """
    inputs = metadata.get("inputs") or []
    return bool(inputs) and all(list(t.get("shape") or [])[:1] == [-1] for t in inputs)


def random_tensor(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Random data of a v2 datatype: normal floats, small integers, booleans, or text for BYTES."""
    shape = tuple(int(d) for d in shape)
    if datatype == "BYTES":
        count = int(np.prod(shape)) if shape else 1
        sentences = [" ".join(rng.choice(_WORDS, size=int(rng.integers(4, 12)))) for _ in range(count)]
        return as_bytes_array(np.array(sentences, dtype=object).reshape(shape))
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if datatype == "BF16":
        raise InvalidInput("BF16 inputs cannot be generated", tensor=None,
                           hint="pass inputs={...} with the request data yourself")
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "u":
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.integers(-50, 50, size=shape).astype(dtype)


def request_inputs(
    metadata: Mapping[str, Any],
    *,
    data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    batch_size: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_batch_size: int | None = None,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """The input dicts the benchmark sends (requests cycle through them).

    Args:
        metadata: the model's KServe v2 metadata (name, inputs with datatype and shape).
        data: one input dict, or a list of them, to send instead of random data.
        batch_size: rows per request when the model batches.
        shapes: dims (without the batch dimension) for inputs with variable dims.
        max_batch_size: the model's config value when known (decides whether dim 0 is the batch).
        seed: the random generator's seed.

    Returns:
        A non-empty list of dicts of NumPy arrays by input name.

    Raises:
        InvalidInput: a shape or input name that does not fit the signature, or a batch too large.
    """
    model = metadata.get("name") or None
    is_batched = max_batch_size > 0 if max_batch_size is not None else batched(metadata)
    if is_batched and max_batch_size and batch_size > max_batch_size:
        raise InvalidInput("batch_size is larger than the model's max_batch_size", model=model,
                           expected=f"at most {max_batch_size}", got=batch_size,
                           hint=f"pass batch_size={max_batch_size} or less")
    if batch_size < 1:
        raise InvalidInput("batch_size must be at least 1", model=model, got=batch_size)
    if data is not None:
        items = [data] if isinstance(data, Mapping) else list(data)
        if not items:
            raise InvalidInput("inputs is an empty list", model=model, hint="pass at least one input dict")
        return [_user_inputs(item, metadata, model) for item in items]
    shapes = dict(shapes or {})
    known = {t["name"] for t in metadata.get("inputs") or []}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise InvalidInput(f"shapes names unknown input {', '.join(repr(u) for u in unknown)}", model=model,
                           expected=sorted(known), hint="name the model's inputs in shapes={...}")
    rng = np.random.default_rng(seed)
    generated = {}
    for spec in metadata.get("inputs") or []:
        dims = [int(d) for d in spec.get("shape") or []]
        if is_batched:
            dims = dims[1:]
        if spec["name"] in shapes:
            given = [int(d) for d in shapes[spec["name"]]]
            if len(given) != len(dims) or any(d != -1 and d != g for d, g in zip(dims, given)):
                raise InvalidInput("the shape given does not fit the input's dims", model=model, tensor=spec["name"],
                                   expected=dims, got=given, hint="give every dim; fixed dims must match")
            dims = given
        dims = [1 if d == -1 else d for d in dims]
        shape = [batch_size, *dims] if is_batched else dims
        generated[spec["name"]] = random_tensor(spec["datatype"], shape, rng)
    return [generated]


def _user_inputs(item: Mapping[str, Any], metadata: Mapping[str, Any], model: str | None) -> dict[str, np.ndarray]:
    declared = {t["name"]: t for t in metadata.get("inputs") or []}
    out = {}
    for name, value in item.items():
        if declared and name not in declared:
            raise InvalidInput(f"unknown input {name!r}", model=model, expected=sorted(declared),
                               hint="pass the model's input names in inputs={...}")
        wanted = declared.get(name, {}).get("datatype")
        if hasattr(value, "dtype"):
            array = to_numpy(value)
        elif wanted == "BYTES":
            array = as_bytes_array(value)
        else:  # plain lists (from JSON, or typed in a cell) take the model's dtype
            array = np.asarray(value, dtype=numpy_dtype(wanted)) if wanted and wanted != "BF16" else np.asarray(value)
        if array.dtype.kind in "USO":
            array = as_bytes_array(array)
        if wanted and triton_dtype(array) != wanted:
            raise InvalidInput("the input's dtype is not the model's", model=model, tensor=name, expected=wanted,
                               got=triton_dtype(array),
                               hint=f"cast it, e.g. x.astype('{numpy_dtype(wanted) if wanted != 'BYTES' else object}')")
        out[name] = array
    return out
