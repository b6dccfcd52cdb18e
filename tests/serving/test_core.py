"""The inference core through the in-process API: routing, errors, statistics, hot swap."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import nbserve
from nbserve.errors import InferenceError, InvalidInput, ModelNotFound
from nbserve.serving.core import InferenceCore


@pytest.fixture
def registry():
    reg = nbserve.Registry()
    reg.register(lambda x: x * 2, name="double", example=np.ones((2, 3), "float32"),
                 dynamic_batching={"max_queue_delay_microseconds": 500})
    yield reg
    reg.clear()


@pytest.fixture
def core(registry):
    core = InferenceCore(registry)
    core.start()
    yield core
    core.close()


def test_infer_sync_and_async(core):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(core.infer_sync("double", {"x": x}).outputs["output_0"], x * 2)

    async def run():
        results = await asyncio.gather(*[core.infer("double", {"x": x[i:i + 1]}) for i in range(2)])
        return [r.outputs["output_0"] for r in results]

    outs = asyncio.run(run())
    assert np.array_equal(np.concatenate(outs), x * 2)


def test_errors_name_the_fix(core):
    with pytest.raises(ModelNotFound, match="did you mean 'double'"):
        core.infer_sync("doubel", {"x": np.ones((1, 3), "float32")})
    with pytest.raises(InvalidInput, match=r"tensor 'x' of model 'double'.*FP32.*FP64.*astype\(\"float32\"\)"):
        core.infer_sync("double", {"x": np.ones((1, 3))})
    with pytest.raises(InvalidInput, match=r"wrong shape.*\[-1, 3\].*\[1, 4\]"):
        core.infer_sync("double", {"x": np.ones((1, 4), "float32")})
    with pytest.raises(InvalidInput, match="missing input 'x'"):
        core.infer_sync("double", {})
    with pytest.raises(InvalidInput, match="unexpected input 'y'"):
        core.infer_sync("double", {"x": np.ones((1, 3), "float32"), "y": np.ones(1)})
    with pytest.raises(InvalidInput, match="max_batch_size"):
        core.infer_sync("double", {"x": np.ones((65, 3), "float32")})
    with pytest.raises(InvalidInput, match="unknown output 'nope'"):
        core.infer_sync("double", {"x": np.ones((1, 3), "float32")}, outputs=["nope"])
    with pytest.raises(ModelNotFound, match="version is not served"):
        core.infer_sync("double", {"x": np.ones((1, 3), "float32")}, version=7)
    assert core.infer_sync("double", {"x": np.ones((1, 3), "float32")}).outputs["output_0"].shape == (1, 3)


def test_a_failing_model_fails_only_its_batch(registry, core):
    def fragile(x):
        if (x < 0).any():
            raise ValueError("negative input")
        return x + 1

    registry.register(fragile, example=np.ones((1, 2), "float32"))
    with pytest.raises(InferenceError, match="model 'fragile' v1: the model raised ValueError: negative input"):
        core.infer_sync("fragile", {"x": -np.ones((1, 2), "float32")})
    assert core.infer_sync("fragile", {"x": np.ones((1, 2), "float32")}).outputs["output_0"].tolist() == [[2, 2]]
    assert core.infer_sync("double", {"x": np.ones((1, 3), "float32")}).outputs["output_0"].sum() == 6
    stats = core.model_statistics("fragile")["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] == 1 and stats["success"]["count"] == 1


def test_statistics_count_requests_rows_and_batches(core):
    for rows in (1, 2, 3):
        core.infer_sync("double", {"x": np.ones((rows, 3), "float32")})
    stats = core.model_statistics("double")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 3
    assert stats["inference_count"] == 6
    assert stats["execution_count"] == 3
    assert {b["batch_size"] for b in stats["batch_stats"]} == {1, 2, 3}
    assert stats["inference_stats"]["queue"]["ns"] > 0


def test_recent_latencies_one_per_request_newest_last(core):
    before = time.monotonic_ns()

    async def burst(n):
        return await asyncio.gather(*[core.infer("double", {"x": np.ones((1, 3), "float32")}) for _ in range(n)])

    asyncio.run(burst(16))  # batched together: one entry of recent per batch, one latency per request
    middle = time.monotonic_ns()
    core.infer_sync("double", {"x": np.ones((2, 3), "float32")})
    after = time.monotonic_ns()

    every = core.recent_latencies("double", 1)
    assert len(every) == 17
    assert all(0 < d < after - before for d in every)
    latest = core.recent_latencies("double", 1, since_ns=middle)
    assert len(latest) == 1 and latest[0] == every[-1] and 0 < latest[0] < after - middle
    assert core.recent_latencies("double", 1, since_ns=after) == []


def test_metadata_config_index(core):
    meta = core.model_metadata("double")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["versions"] == ["1"] and meta["platform"] == "python"
    assert core.model_config("double").max_batch_size == 64
    assert core.repository_index() == [{"name": "double", "version": "1", "state": "READY", "reason": ""}]


def test_unload_and_load(core):
    core.unload_model_sync("double")
    assert not core.model_ready("double")
    assert core.repository_index()[0]["state"] == "UNAVAILABLE"
    with pytest.raises(nbserve.errors.ModelNotReady, match="unloaded.*load"):
        core.infer_sync("double", {"x": np.ones((1, 3), "float32")})
    core.load_model_sync("double")
    assert core.model_ready("double")


def test_hot_swap_under_64_way_load_fails_nothing(registry, core):
    stop = threading.Event()
    failures: list[BaseException] = []
    versions_seen: set[int] = set()
    x = np.ones((1, 3), "float32")

    async def client():
        while not stop.is_set():
            try:
                result = await core.infer("double", {"x": x})
                versions_seen.add(result.model_version)
            except BaseException as exc:  # any failure is what this test looks for
                failures.append(exc)

    def load():
        async def main():
            await asyncio.gather(*[client() for _ in range(64)])

        asyncio.run(main())

    thread = threading.Thread(target=load)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not versions_seen and time.monotonic() < deadline:
            time.sleep(0.01)  # the load must reach version 1 before the swaps start
        for version in range(2, 7):
            registry.register(lambda x, k=version: x * k, name="double", example=np.ones((2, 3), "float32"))
            deadline = threading.Event()
            deadline.wait(0.1)  # let traffic flow on the new version
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures[:3]
    assert versions_seen >= {1, 6}
    assert core.infer_sync("double", {"x": x}).model_version == 6


def test_version_policy_serves_all_versions(registry, core):
    registry.register(lambda x: x * 10, name="multi", example=np.ones((1, 2), "float32"), version_policy="all")
    registry.register(lambda x: x * 20, name="multi", example=np.ones((1, 2), "float32"), version_policy="all")
    x = np.ones((1, 2), "float32")
    assert core.infer_sync("multi", {"x": x}, version=1).outputs["output_0"][0, 0] == 10
    assert core.infer_sync("multi", {"x": x}, version=2).outputs["output_0"][0, 0] == 20
    assert core.infer_sync("multi", {"x": x}).outputs["output_0"][0, 0] == 20
