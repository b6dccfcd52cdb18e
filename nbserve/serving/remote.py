"""Calling a KServe v2 server (nbserve's subprocess, or a real Triton) with tritonclient.

Errors come back as nbserve errors chosen by HTTP status, carrying the server's message, so code that
calls a subprocess server catches the same exceptions as code that calls the in-kernel one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InferenceError, InvalidInput, ModelNotFound, NbserveError, ServerBusy
from ..tensors import as_bytes_array, to_numpy, triton_dtype

__all__ = ["http_infer", "error_from_status"]

_BY_STATUS = {400: InvalidInput, 404: ModelNotFound, 503: ServerBusy}


def error_from_status(status: Any, message: str, model: str) -> NbserveError:
    try:
        code = int(str(status))
    except (TypeError, ValueError):
        code = 500
    cls = _BY_STATUS.get(code, InferenceError)
    return cls(f"the server answered {code}: {message}", model=model)


def http_infer(
    client: Any,
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: int | str | None = None,
    outputs: Sequence[str] | None = None,
    priority: int = 0,
    timeout_us: int = 0,
    sequence_id: int | str = 0,
    sequence_start: bool = False,
    sequence_end: bool = False,
) -> dict[str, Any]:
    """One request with binary tensors through a ``tritonclient.http.InferenceServerClient``."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    infer_inputs = []
    for name, value in inputs.items():
        array = value if hasattr(value, "dtype") else np.asarray(value)
        array = to_numpy(array)
        if array.dtype.kind in "USO":
            array = as_bytes_array(array)
        tensor = httpclient.InferInput(name, list(array.shape), triton_dtype(array))
        tensor.set_data_from_numpy(array, binary_data=True)
        infer_inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs] if outputs else None
    try:
        result = client.infer(
            model,
            infer_inputs,
            model_version="" if version in (None, "") else str(version),
            outputs=requested,
            priority=priority,
            timeout=timeout_us or None,
            sequence_id=sequence_id,
            sequence_start=sequence_start,
            sequence_end=sequence_end,
        )
    except InferenceServerException as exc:
        raise error_from_status(exc.status(), exc.message(), model) from None
    response = result.get_response()
    return {o["name"]: result.as_numpy(o["name"]) for o in response.get("outputs", [])}
