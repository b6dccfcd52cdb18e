"""Sample requests for the EnsembleBuilder's "run sample": made-up inputs and short previews.

``example_inputs`` fills every ensemble input with a small plausible value (text for BYTES, 0.5 for
floats, 1 for integers) so a sample runs before the user has data at hand; ``preview`` turns a
tensor into the few characters a node can show.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["SAMPLE_TEXT", "example_inputs", "preview", "previews"]

SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."
PREVIEW_CHARS = 60


def example_inputs(specs: Iterable[Any], *, batched: bool) -> dict[str, Any]:
    """One request's worth of inputs for ``specs`` (TensorSpecs): batch size 1, variable dims 1.

    Args:
        specs: the ensemble's input TensorSpecs.
        batched: whether the ensemble batches (max_batch_size > 0): adds the batch dimension.

    Returns:
        ``{name: numpy array}``.

    >>> from nbserve import TensorSpec
    >>> x = example_inputs([TensorSpec("text", [1], "BYTES"), TensorSpec("w", [-1, 2], "FP32")], batched=True)
    >>> x["text"].tolist(), x["w"].tolist()
    ([[b'The quick brown fox jumps over the lazy dog.']], [[[0.5, 0.5]]])
    """
    import numpy as np

    from ..tensors import numpy_dtype

    inputs = {}
    for spec in specs:
        shape = ([1] if batched else []) + [1 if d == -1 else d for d in spec.dims]
        if spec.dtype == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill(SAMPLE_TEXT.encode())
        elif spec.dtype == "BOOL":
            array = np.ones(shape, dtype=bool)
        elif spec.dtype.startswith(("FP", "BF")):
            array = np.full(shape, 0.5, dtype=numpy_dtype(spec.dtype))
        else:
            array = np.ones(shape, dtype=numpy_dtype(spec.dtype))
        inputs[spec.name] = array
    return inputs


def preview(value: Any) -> dict[str, Any]:
    """``{"dtype", "shape", "text"}`` for a tensor: its Triton dtype, its shape and a short text.

    >>> import numpy as np
    >>> preview(np.array([[0.123456, 2.0]], dtype="float32"))
    {'dtype': 'FP32', 'shape': [1, 2], 'text': '[[0.1235, 2]]'}
    >>> preview(np.array([b"hello"], dtype=object))["text"]
    "['hello']"
    """
    import numpy as np

    from ..tensors import to_numpy, triton_dtype

    array = to_numpy(value)
    if array.dtype == object or array.dtype.kind in "SU":
        dtype = "BYTES"
        flat = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)[:8]]
        text = repr(flat if array.ndim else flat[0])
    else:
        dtype = triton_dtype(array.dtype)
        text = np.array2string(array, threshold=8, edgeitems=2, separator=", ", max_line_width=10_000,
                               formatter={"float_kind": lambda v: f"{v:.4g}"})
        text = " ".join(text.split())
    if len(text) > PREVIEW_CHARS:
        text = text[: PREVIEW_CHARS - 1] + "…"
    return {"dtype": dtype, "shape": [int(d) for d in array.shape], "text": text}


def previews(tensors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``preview`` of every tensor in a dict."""
    return {name: preview(value) for name, value in tensors.items()}
