"""The nbserve exception tree.

Every error carries structured fields (``model``, ``tensor``, ``expected``, ``got``, ``hint``) and
builds its own message from them, so a notebook user reads what failed, for which model and tensor,
what was expected, what came, and how to fix it. The HTTP and gRPC layers map classes to status
codes in one place (``status_code`` / ``grpc_status`` below)::

    NbserveError
    ├── ConfigError              400  a model configuration Triton would reject
    │   └── SignatureError       400  inputs/outputs that do not match the model
    ├── InvalidInput             400  a request whose tensors do not match the model
    ├── ModelNotFound            404  no such model or version
    ├── ModelNotReady            503  known but not loaded
    ├── ServerBusy               503  queue full or queue timeout
    ├── InferenceError           500  the model itself raised (chained with ``from``)
    ├── ServerStateError         409  start/stop/serve used in the wrong state
    ├── ExportError              500  writing or reading a repository failed
    └── MissingDependency        ---  an optional extra is not installed (also an ImportError)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NbserveError",
    "ConfigError",
    "SignatureError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "ServerBusy",
    "InferenceError",
    "ServerStateError",
    "ExportError",
    "MissingDependency",
]


class NbserveError(Exception):
    """Base class: a message built from what failed, where, what was expected and how to fix it."""

    status_code = 500
    grpc_status = "INTERNAL"

    def __init__(
        self,
        what: str,
        *,
        model: str | None = None,
        version: int | str | None = None,
        tensor: str | None = None,
        expected: Any = None,
        got: Any = None,
        hint: str | None = None,
    ) -> None:
        self.what = what
        self.model = model
        self.version = version
        self.tensor = tensor
        self.expected = expected
        self.got = got
        self.hint = hint
        super().__init__(self._build_message())

    def _build_message(self) -> str:
        where = []
        if self.tensor is not None:
            where.append(f"tensor '{self.tensor}'")
        if self.model is not None:
            model = f"model '{self.model}'"
            if self.version not in (None, "", -1):
                model += f" v{self.version}"
            where.append(model)
        message = f"{' of '.join(where)}: {self.what}" if where else self.what
        if self.expected is not None:
            message += f"; expected {self.expected}"
        if self.got is not None:
            message += f", got {self.got}" if self.expected is not None else f"; got {self.got}"
        if self.hint:
            message += f". Fix: {self.hint}"
        return message

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(NbserveError):
    status_code = 400
    grpc_status = "INVALID_ARGUMENT"


class SignatureError(ConfigError):
    pass


class InvalidInput(NbserveError):
    status_code = 400
    grpc_status = "INVALID_ARGUMENT"


class ModelNotFound(NbserveError):
    status_code = 404
    grpc_status = "NOT_FOUND"


class ModelNotReady(NbserveError):
    status_code = 503
    grpc_status = "UNAVAILABLE"


class ServerBusy(NbserveError):
    status_code = 503
    grpc_status = "UNAVAILABLE"


class InferenceError(NbserveError):
    status_code = 500
    grpc_status = "INTERNAL"


class ServerStateError(NbserveError):
    status_code = 409
    grpc_status = "FAILED_PRECONDITION"


class ExportError(NbserveError):
    status_code = 500
    grpc_status = "INTERNAL"


class MissingDependency(NbserveError, ImportError):
    """An optional extra is needed: the message is the exact pip command to run."""

    def __init__(self, module: str, extra: str, *, purpose: str | None = None) -> None:
        self.module_name = module
        self.extra = extra
        what = f"{purpose} needs the '{module}' package, which is not installed" if purpose else (
            f"the '{module}' package is not installed"
        )
        super().__init__(what, hint=f'pip install "nbserve[{extra}]"')


def require(module: str, extra: str, *, purpose: str | None = None) -> Any:
    """Import an optional framework on first use, or fail naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(module.split(".")[0], extra, purpose=purpose) from exc
