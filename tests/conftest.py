"""Shared fixtures. Keep this file small: fixtures that only one folder needs live in that folder."""

from __future__ import annotations

import numpy as np
import pytest

from nbserve.registry import Registry, default_registry


@pytest.fixture
def registry() -> Registry:
    """A fresh, empty Registry; every model in it is removed (and closed) after the test."""
    reg = Registry()
    yield reg
    reg.clear()


@pytest.fixture
def clean_default_registry() -> Registry:
    """The process-wide registry behind ``nbserve.register``, emptied before and after the test."""
    default_registry.clear()
    yield default_registry
    default_registry.clear()


@pytest.fixture
def batch() -> np.ndarray:
    """A small FP32 batch: 4 rows of 3 features."""
    return np.arange(12, dtype=np.float32).reshape(4, 3)
