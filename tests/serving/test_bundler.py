"""Requests one loop sends in one iteration are queued together (nbserve/serving/bundler.py).

Everything goes through the real in-kernel server's ``ainfer``: the answers must equal the model's
own per request, batches must respect max_batch_size and shapes, statistics must count requests (not
bundles), and errors, cancellation, a full queue and a version swap must reach every request.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import nbserve
from nbserve.errors import InferenceError, InvalidInput, ServerBusy


def _weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)


@pytest.fixture
def registry():
    reg = nbserve.Registry()
    w = _weights(0)
    reg.register(lambda x: {"y": x @ w, "twice": x * 2}, name="linear", example=np.ones((2, 4), np.float32),
                 max_batch_size=8, dynamic_batching={"max_queue_delay_microseconds": 2000})
    yield reg
    reg.clear()


@pytest.fixture
def server(registry):
    with nbserve.serve(registry, http=False, grpc=False, metrics=False) as server:
        yield server


def _gather(server, requests, model="linear"):
    async def main():
        return await asyncio.gather(*[server.ainfer(model, r) for r in requests], return_exceptions=True)

    return asyncio.run(main())


def _stats(server, model="linear"):
    return server.core.model_statistics(model)["model_stats"][-1]


def test_answers_equal_the_models_per_request_and_batches_stay_within_max(server):
    rng = np.random.default_rng(1)
    requests = [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(37)]
    answers = _gather(server, requests)
    w = _weights(0)
    for request, answer in zip(requests, answers):
        np.testing.assert_allclose(answer["y"], request["x"] @ w, rtol=1e-5)
        np.testing.assert_array_equal(answer["twice"], request["x"] * 2)
        assert answer["y"].shape == (1, 3)
    stats = _stats(server)
    assert stats["inference_stats"]["success"]["count"] == 37  # requests, not bundles
    assert stats["inference_count"] == 37
    assert max(b["batch_size"] for b in stats["batch_stats"]) <= 8
    # Sent in one loop iteration: bundles of 8, 8, 8, 8 and 5 rows, each run as one batch.
    assert stats["execution_count"] == 5
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]} == {8: 4, 5: 1}
    assert len(server.core.recent_latencies("linear", 1)) == 37
    assert server.core._bundlers == {}  # nothing left waiting for a loop


def test_requests_of_several_rows_get_their_own_rows(server):
    sizes = [1, 3, 2, 1, 1, 4, 2]
    requests = [{"x": np.full((n, 4), i, np.float32)} for i, n in enumerate(sizes)]
    answers = _gather(server, requests)
    for i, (n, answer) in enumerate(zip(sizes, answers)):
        np.testing.assert_array_equal(answer["twice"], np.full((n, 4), 2 * i, np.float32))
    assert _stats(server)["inference_count"] == sum(sizes)


def test_shapes_are_never_mixed(registry, server):
    registry.register(lambda x: x.sum(axis=1, keepdims=True), name="rowsum", example=np.ones((2, 5), np.float32),
                      inputs=[nbserve.TensorSpec("x", [-1], "FP32")], max_batch_size=8,
                      dynamic_batching={"max_queue_delay_microseconds": 2000})
    widths = [2, 5, 2, 7, 5, 2]
    requests = [{"x": np.arange(w, dtype=np.float32)[None]} for w in widths]
    answers = _gather(server, requests, model="rowsum")
    assert [float(a["output_0"][0, 0]) for a in answers] == [w * (w - 1) / 2 for w in widths]
    assert _stats(server, "rowsum")["inference_count"] == 6


def test_a_failing_bundle_fails_each_request_and_the_server_keeps_serving(registry, server):
    def fragile(x):
        if (x < 0).any():
            raise ValueError("negative input")
        return x + 1

    registry.register(fragile, example=np.ones((1, 2), np.float32), dynamic_batching={})
    requests = [{"x": np.full((1, 2), -1.0 if i == 3 else 1.0, np.float32)} for i in range(6)]
    answers = _gather(server, requests, model="fragile")
    failed = [a for a in answers if isinstance(a, BaseException)]
    assert failed and all(isinstance(a, InferenceError) and "negative input" in str(a) for a in failed)
    assert _gather(server, [{"x": np.ones((1, 2), np.float32)}], model="fragile")[0]["output_0"].tolist() == [[2, 2]]
    stats = _stats(server, "fragile")["inference_stats"]
    assert stats["fail"]["count"] == len(failed) and stats["success"]["count"] == 6 - len(failed) + 1


def test_a_bad_request_raises_at_once_and_spoils_nothing(server):
    async def main():
        good = [asyncio.ensure_future(server.ainfer("linear", {"x": np.ones((1, 4), np.float32)})) for _ in range(3)]
        with pytest.raises(InvalidInput, match=r"tensor 'x' of model 'linear'.*wrong shape"):
            await server.ainfer("linear", {"x": np.ones((1, 5), np.float32)})
        return await asyncio.gather(*good)

    assert all(a["twice"].tolist() == [[2, 2, 2, 2]] for a in asyncio.run(main()))


def test_a_cancelled_request_leaves_the_others_answered(server):
    async def main():
        tasks = [asyncio.ensure_future(server.ainfer("linear", {"x": np.full((1, 4), i, np.float32)}))
                 for i in range(6)]
        await asyncio.sleep(0)  # every task has sent its request: one bundle
        tasks[2].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    answers = asyncio.run(main())
    assert isinstance(answers[2], asyncio.CancelledError)
    for i in (0, 1, 3, 4, 5):
        assert answers[i]["twice"].tolist() == [[2.0 * i] * 4]


def test_a_full_queue_answers_every_request_busy(registry, server):
    gate = threading.Event()

    def blocked(x):
        gate.wait(10)
        return x

    registry.register(blocked, example=np.ones((1, 2), np.float32), max_batch_size=4,
                      dynamic_batching={"default_queue_policy": {"max_queue_size": 1}})
    gate.clear()

    async def main():
        first = asyncio.ensure_future(server.ainfer("blocked", {"x": np.ones((1, 2), np.float32)}))
        await asyncio.sleep(0.2)  # running: the instance is busy, the queue is empty
        queued = asyncio.ensure_future(server.ainfer("blocked", {"x": np.ones((1, 2), np.float32)}))
        await asyncio.sleep(0.05)  # queued: the queue is full
        rejected = await asyncio.gather(*[server.ainfer("blocked", {"x": np.ones((1, 2), np.float32)})
                                          for _ in range(3)], return_exceptions=True)
        gate.set()
        return rejected, await first, await queued

    rejected, first, queued = asyncio.run(main())
    assert all(isinstance(r, ServerBusy) and "queue is full" in str(r) for r in rejected)
    assert first["output_0"].tolist() == queued["output_0"].tolist() == [[1, 1]]


def test_a_version_swapped_before_the_bundle_is_queued_serves_the_new_version(registry, server):
    registry.register(lambda x: x * 10, name="swap", example=np.ones((1, 2), np.float32),
                      dynamic_batching={})
    old = server.core._latest["swap"]

    async def main():
        tasks = [asyncio.ensure_future(server.ainfer("swap", {"x": np.ones((1, 2), np.float32)})) for _ in range(4)]
        await asyncio.sleep(0)  # the four requests wait in this loop's bundle ...
        registry.register(lambda x: x * 20, name="swap", example=np.ones((1, 2), np.float32),
                          dynamic_batching={})  # ... while their version retires
        for retiring in server.core._retiring:
            retiring.join(10)  # retired for sure (it had nothing queued) before the bundle is sent
        return await asyncio.gather(*tasks)

    answers = asyncio.run(main())
    assert server.core._latest["swap"] is not old
    assert [a["output_0"].tolist() for a in answers] == [[[20.0, 20.0]]] * 4  # routed again, one by one


def test_models_whose_requests_cannot_share_an_entry_are_queued_one_by_one(registry, server):
    registry.register(lambda x: x, name="timed", example=np.ones((1, 2), np.float32),
                      dynamic_batching={"default_queue_policy": {"default_timeout_microseconds": 10_000_000}})
    registry.register(lambda x: x, name="single", example=np.ones((2,), np.float32), max_batch_size=0)
    assert server.core._latest["linear"].bundles
    assert not server.core._latest["timed"].bundles and not server.core._latest["single"].bundles
    answers = _gather(server, [{"x": np.full((1, 2), i, np.float32)} for i in range(5)], model="timed")
    assert [a["output_0"][0, 0] for a in answers] == [0, 1, 2, 3, 4]
    answers = _gather(server, [{"x": np.full((2,), i, np.float32)} for i in range(3)], model="single")
    assert [a["output_0"][0] for a in answers] == [0, 1, 2]


def test_a_model_that_drops_rows_fails_the_bundle_with_a_clear_error(registry, server):
    registry.register(lambda x: x[:1], name="first_row", example=np.ones((1, 2), np.float32), dynamic_batching={})
    answers = _gather(server, [{"x": np.full((1, 2), i, np.float32)} for i in range(3)], model="first_row")
    assert all(isinstance(a, InferenceError) and "different number of rows" in str(a) for a in answers)
    alone = _gather(server, [{"x": np.full((2, 2), 7, np.float32)}], model="first_row")[0]
    assert alone["output_0"].tolist() == [[7, 7]]  # one request gets what the model returned, as in Triton
