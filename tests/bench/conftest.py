"""A real in-kernel server with small models of known behaviour, shared by the benchmark tests.

Models:
    double  batched (max_batch_size 8), x * 2: fast, for counts and rates
    slow    not batched, one instance, sleeps 20 ms per request: known latency
    text    BYTES in, lengths out: inputs generated from a text signature
    flaky   batched, fails when the first value of a request is negative: error accounting
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import nbserve
from nbserve.registry import Registry

from bench_helpers import SLOW_S



def _slow(x):
    time.sleep(SLOW_S)  # the model's own work: the latency the benchmark must find
    return x + 1


def _flaky(x):
    if (x[:, 0] < 0).any():
        raise ValueError("negative input")
    return x


@pytest.fixture(scope="module")
def models() -> Registry:
    registry = Registry()
    registry.register(lambda x: x * 2, name="double", example=np.ones((1, 4), "float32"), max_batch_size=8)
    registry.register(_slow, name="slow", example=np.ones((1, 4), "float32"), max_batch_size=0)
    registry.register(lambda text: np.char.str_len(text.astype(str)).astype(np.int32), name="text",
                      example=np.array([["some words"]], dtype=object), max_batch_size=8)
    registry.register(_flaky, name="flaky", example=np.ones((1, 2), "float32"), max_batch_size=8)
    yield registry
    registry.clear()


@pytest.fixture(scope="module")
def server(models):
    # A Server of its own, not nbserve.serve(): serve() replaces the server the last call started,
    # so a test that calls it would stop this module-wide server under the tests that follow.
    with nbserve.Server(models).start() as running:
        yield running
