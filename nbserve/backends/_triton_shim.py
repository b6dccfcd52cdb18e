"""A small stand-in for Triton's ``triton_python_backend_utils``, so Python-backend ``model.py``
files (ours or hand-written ones, as Triton's docs show them) run inside nbserve without Triton.

It covers what Python-backend models use in practice: ``Tensor``, ``InferenceRequest``,
``InferenceResponse``, ``TritonError``, ``TritonModelException``, ``get_input_tensor_by_name``,
``get_output_tensor_by_name``, the config helpers and ``Logger``. Installed into ``sys.modules`` under
Triton's module name only while a model file is imported, and only when the real one is absent.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..tensors import array_library, numpy_dtype, to_numpy, triton_dtype

_log = logging.getLogger("nbserve.python_model")

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    pass


class Tensor:
    def __init__(self, name: str, array: Any) -> None:
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return to_numpy(self._array)

    def is_cpu(self) -> bool:
        return array_library(self._array) == "numpy"

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> str:
        return triton_dtype(self._array)

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> Tensor:
        # Device arrays stay on their device: prefer torch, which takes any DLPack producer.
        try:
            import torch

            return cls(name, torch.from_dlpack(capsule))
        except ImportError:
            return cls(name, np.from_dlpack(capsule))

    @property
    def array(self) -> Any:
        return self._array


class InferenceRequest:
    def __init__(
        self,
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        model_name: str = "",
        request_id: str = "",
        correlation_id: Any = 0,
        parameters: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._model_name = model_name
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._parameters = parameters or {}

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> Any:
        return self._correlation_id

    def model_name(self) -> str:
        return self._model_name

    def parameters(self) -> str:
        import json

        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return False


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None, **_: Any):
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("input", []) if t["name"] == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((t for t in model_config.get("output", []) if t["name"] == name), None)


def triton_string_to_numpy(data_type: str) -> Any:
    return numpy_dtype(data_type)


def numpy_to_triton_type(dtype: Any) -> str:
    return f"TYPE_{triton_dtype(dtype)}".replace("TYPE_BYTES", "TYPE_STRING")


def serialize_byte_tensor(array: np.ndarray) -> np.ndarray:
    from ..tensors import serialize_bytes

    return np.frombuffer(serialize_bytes(array), dtype=np.uint8)


def deserialize_bytes_tensor(buffer: bytes) -> np.ndarray:
    from ..tensors import deserialize_bytes

    # Count the elements first: the shape is flat in Triton's helper too.
    import struct

    count, offset, view = 0, 0, memoryview(buffer)
    while offset < len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4 + length
        count += 1
    return deserialize_bytes(buffer, [count])


class Logger:
    @staticmethod
    def log_info(message: str) -> None:
        _log.info(message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning(message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error(message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug(message)

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        _log.info(message)
