"""Framework backends: one module per framework, each imported only when it is needed.

Every backend module provides ``name``, ``matches(obj)``, ``adapt(...)``, ``write(...)``,
``reads(config)`` and ``read(config, version_dir)`` (see :mod:`.base`). The order below is the order
in which ``register`` tries them: specific frameworks first, plain callables last.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError, SignatureError

BACKEND_NAMES = ("tensorrt", "transformers", "torch", "onnx", "trees", "python")


def backend(name: str) -> ModuleType:
    """The backend module called ``name``."""
    if name not in BACKEND_NAMES:
        raise ConfigError(f"unknown framework {name!r}", expected=", ".join(BACKEND_NAMES))
    return importlib.import_module(f"{__name__}.{name}")


def available_backends() -> list[ModuleType]:
    modules = []
    for name in BACKEND_NAMES:
        try:
            modules.append(backend(name))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return modules


def backend_for(obj: Any, framework: str | None = None, *, model: str | None = None) -> ModuleType:
    """The backend that adapts ``obj`` (or the one named by ``framework``)."""
    if framework:
        return backend(framework)
    for module in available_backends():
        if module.matches(obj):
            return module
    raise SignatureError(
        f"nbserve cannot serve a {type(obj).__module__}.{type(obj).__qualname__}",
        model=model,
        expected="a Python callable, torch nn.Module/TorchScript, ONNX model or path, tree model "
        "(XGBoost, LightGBM, scikit-learn forests), a transformers (tokenizer, model) pair, or a TensorRT engine",
        hint="wrap it in a function over NumPy arrays and register that function",
    )


def backend_for_config(config: ModelConfig) -> ModuleType:
    """The backend that runs a model read from a repository."""
    for module in available_backends():
        if module.reads(config):
            return module
    raise ConfigError(
        "nbserve cannot run this model's platform/backend in the kernel",
        model=config.name,
        got=f"platform={config.platform!r} backend={config.backend!r}",
        hint="nbserve runs python, onnxruntime_onnx, pytorch_libtorch, fil and tensorrt_plan models",
    )
