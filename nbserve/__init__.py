"""nbserve: serve models from a Jupyter notebook with Triton's config, batching and wire protocol.

    import nbserve
    model = nbserve.register(fn, name="scorer", example=batch, max_batch_size=64)
    server = nbserve.serve()
    server.infer("scorer", {"x": batch})

Everything here is imported lazily: ``import nbserve`` loads no framework and no server code.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "register",
    "models",
    "get",
    "remove",
    "TensorSpec",
    "register_stateful",
    "StateSpec",
    "SequenceStepper",
    "Ensemble",
    "EnsembleBuilder",
    "Registry",
    "default_registry",
    "write_repository",
    "read_repository",
    "serve",
    "Server",
    "export",
    "validate",
    "parity",
    "bench",
    "sweep",
    "Dashboard",
    "errors",
    "__version__",
]

# public name -> (module, attribute)
_LAZY = {
    "TensorSpec": ("nbserve.tensors", "TensorSpec"),
    "register_stateful": ("nbserve.stateful", "register_stateful"),
    "StateSpec": ("nbserve.stateful", "StateSpec"),
    "SequenceStepper": ("nbserve.widgets.sequence_stepper", "SequenceStepper"),
    "Ensemble": ("nbserve.ensemble", "Ensemble"),
    "EnsembleBuilder": ("nbserve.widgets.ensemble_builder", "EnsembleBuilder"),
    "Registry": ("nbserve.registry", "Registry"),
    "default_registry": ("nbserve.registry", "default_registry"),
    "write_repository": ("nbserve.repository", "write_repository"),
    "read_repository": ("nbserve.repository", "read_repository"),
    "serve": ("nbserve.serving.server", "serve"),
    "Server": ("nbserve.serving.server", "Server"),
    "export": ("nbserve.export.exporter", "export"),
    "validate": ("nbserve.export.validate", "validate"),
    "parity": ("nbserve.export.parity", "parity"),
    "bench": ("nbserve.bench", None),  # the package is callable: nbserve.bench(server, model, ...)
    "sweep": ("nbserve.bench.sweeps", "sweep"),
    "Dashboard": ("nbserve.widgets.dashboard", "Dashboard"),
    "errors": ("nbserve.errors", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nbserve' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _registry() -> Any:
    return importlib.import_module("nbserve.registry").default_registry


def register(obj: Any, name: str | None = None, version: int | None = None, inputs: Any = None,
             outputs: Any = None, example: Any = None, **config: Any) -> Any:
    """Register a model in the notebook's registry; see :meth:`nbserve.registry.Registry.register`.

    >>> import numpy as np
    >>> m = register(lambda x: x + 1, name="plus_one", example=np.zeros((1, 2), "float32"))
    >>> m.infer({"x": np.zeros((1, 2), "float32")})["output_0"].tolist()
    [[1.0, 1.0]]
    >>> remove("plus_one")
    """
    return _registry().register(obj, name, version, inputs, outputs, example, **config)


def models() -> Any:
    """The registered models, as a table (rich HTML in notebooks)."""
    return _registry().models()


def get(name: str) -> Any:
    """The registered model called ``name`` (raises ModelNotFound with a close-match hint)."""
    return _registry().get(name)


def remove(name: str, version: int | None = None) -> None:
    """Remove a model, or one version of it."""
    _registry().remove(name, version)


def load_ipython_extension(ipython: Any) -> None:
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)
