"""Notebook widgets (anywidget). Their JavaScript is built from the repository's ``widgets/`` folder
into ``static/``; anywidget is imported only when a widget is used (``pip install "nbserve[notebook]"``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["EnsembleBuilder", "Dashboard", "SequenceStepper"]


def __getattr__(name: str) -> Any:
    if name == "EnsembleBuilder":
        from .ensemble_builder import EnsembleBuilder

        return EnsembleBuilder
    if name == "Dashboard":
        from .dashboard import Dashboard

        return Dashboard
    if name == "SequenceStepper":
        from .sequence_stepper import SequenceStepper

        return SequenceStepper
    raise AttributeError(f"module 'nbserve.widgets' has no attribute {name!r}")
