"""Production export: Triton repositories for the notebook's models, linting, parity checks.

    report = nbserve.export("model_repository/")              # exporter.py
    nbserve.validate("model_repository/")                       # validate.py: lint any repository
    nbserve.parity("model_repository/", {"scorer": {"x": x}})  # parity.py: same answers everywhere?

Modules: :mod:`.exporter` (``export()`` and its report), :mod:`.portable` (Python-backend wrappers
around native model files, with :mod:`._portable_runtime` copied into their ``model.py``),
:mod:`.requirements` (``requirements.txt`` of Python models), :mod:`.docs` (README.md, ``kserve.yaml``,
the ``docker run`` line), :mod:`.validate` and :mod:`.parity`.

``nbserve.export`` names both this package and the function: importing a submodule binds the
package to that name on ``nbserve``, so the package itself is callable and runs ``export()``.
Nothing here imports a framework at import time.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["export", "ExportReport", "ExportedModel", "ValidationReport", "Issue", "ParityReport"]

_LAZY = {
    "export": ("exporter", "export"),
    "ExportReport": ("exporter", "ExportReport"),
    "ExportedModel": ("exporter", "ExportedModel"),
    "ValidationReport": ("validate", "ValidationReport"),
    "Issue": ("validate", "Issue"),
    "ParityReport": ("parity", "ParityReport"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nbserve.export' has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module_name}"), attribute)


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .exporter import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
