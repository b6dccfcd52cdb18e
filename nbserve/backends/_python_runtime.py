"""Runs a Python callable on a batch of named tensors.

This module is the single implementation of how a registered callable is called: the in-kernel
runner imports it, and the repository writer copies its source verbatim into the exported
``model.py``, so Triton's Python backend batches, names and casts exactly as the notebook did.
It must therefore import nothing but NumPy and the standard library.
"""

import inspect

import numpy as np


def _concat(arrays):
    if len(arrays) == 1:
        return arrays[0]
    module = type(arrays[0]).__module__.split(".")[0]
    if module == "torch":
        import torch

        return torch.cat(list(arrays), dim=0)
    if module == "cupy":
        import cupy

        return cupy.concatenate(list(arrays), axis=0)
    return np.concatenate(arrays, axis=0)


def _to_output_array(value, dtype):
    """Lists, scalars and str results become arrays; device arrays stay where they are."""
    module = type(value).__module__.split(".")[0]
    if module in ("torch", "cupy"):
        return value
    if module == "cudf":
        return value.to_cupy() if hasattr(value, "to_cupy") else value.values
    array = np.asarray(value)
    if array.dtype.kind in ("U", "S") or dtype == "BYTES":
        # As tritonclient encodes BYTES: bytes as they are, anything else as UTF-8 text.
        flat = [x if isinstance(x, bytes) else bytes(x) if isinstance(x, bytearray) else str(x).encode("utf-8")
                for x in array.reshape(-1).tolist()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape)
    if dtype is not None and dtype != "BF16":
        target = np.dtype(NUMPY_NAMES[dtype])
        if array.dtype != target:
            array = array.astype(target)
    return array


NUMPY_NAMES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}


def accepts_keywords(fn, names):
    """Call by keyword when every input is a parameter name (or the callable takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params for n in names)


class CallableRunner:
    """Call ``fn`` on a batch and return a dict of outputs by name.

    ``batched=True``: ``fn`` takes and returns whole batches. ``batched=False``: ``fn`` takes one
    item (the batch dimension removed) and the runner loops and stacks. Results may be a dict, a
    tuple/list (in output order) or a single array.
    """

    def __init__(self, fn, input_names, output_names=None, output_dtypes=None, batched=True, keyword=None,
                 batch_dim=True):
        self.fn = fn
        # Triton needs at least one dim per item: a batch of scalars (shape [N]) is served as [N, 1].
        self.batch_dim = batch_dim
        self.min_rank = 2 if batch_dim else 1
        self.input_names = list(input_names)
        self.output_names = list(output_names) if output_names else None
        self.output_dtypes = dict(output_dtypes or {})
        self.batched = batched
        self.keyword = accepts_keywords(fn, self.input_names) if keyword is None else keyword

    def _call(self, inputs):
        if self.keyword:
            return self.fn(**inputs)
        return self.fn(*[inputs[n] for n in self.input_names if n in inputs])

    def name_outputs(self, result):
        if isinstance(result, dict):
            return {str(k): v for k, v in result.items()}
        values = list(result) if isinstance(result, (tuple, list)) and self._is_multi(result) else [result]
        names = self.output_names or [f"output_{i}" for i in range(len(values))]
        if len(names) != len(values):
            raise ValueError(
                f"the callable returned {len(values)} outputs but {len(names)} are declared "
                f"({', '.join(names)}); return a dict {{name: array}} or fix outputs=[...]"
            )
        return dict(zip(names, values))

    def _is_multi(self, result):
        # A list of numbers is one output; a tuple, or a list of arrays, is several.
        if isinstance(result, tuple):
            return True
        return bool(result) and all(hasattr(v, "shape") for v in result)

    def __call__(self, inputs):
        if self.batched:
            named = self.name_outputs(self._call(inputs))
        else:
            rows = len(next(iter(inputs.values())))
            per_item = [self.name_outputs(self._call({k: v[i] for k, v in inputs.items()})) for i in range(rows)]
            named = {k: _stack([item[k] for item in per_item]) for k in per_item[0]} if per_item else {}
        out = {}
        for k, v in named.items():
            array = _to_output_array(v, self.output_dtypes.get(k))
            while array.ndim < self.min_rank:
                array = array.reshape(tuple(array.shape) + (1,))
            out[k] = array
        return out


def _stack(values):
    module = type(values[0]).__module__.split(".")[0]
    if module == "torch":
        import torch

        return torch.stack(list(values))
    if module == "cupy":
        import cupy

        return cupy.stack(list(values))
    if isinstance(values[0], (str, bytes)):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.stack([np.asarray(v) for v in values])


def run_requests(runner, requests_inputs):
    """Merge per-request inputs along the batch, run once, split the outputs back per request."""
    if not getattr(runner, "batch_dim", True):  # no batch dimension: nothing to merge along
        return [runner(inputs) for inputs in requests_inputs]
    sizes = [len(next(iter(r.values()))) if r else 1 for r in requests_inputs]
    names = requests_inputs[0].keys()
    merged = {n: _concat([r[n] for r in requests_inputs]) for n in names}
    outputs = runner(merged)
    results, start = [], 0
    for size in sizes:
        results.append({k: v[start:start + size] for k, v in outputs.items()})
        start += size
    return results
