"""Property tests of Triton's dynamic batching semantics, on the real DynamicBatcher."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbserve.config import build_config
from nbserve.errors import ServerBusy
from nbserve.serving.batcher import DynamicBatcher, Pending


class CountingWaiter:
    """Records every resolution, so a double resolution is seen instead of masked."""

    def __init__(self) -> None:
        self.results: list[object] = []
        self.errors: list[BaseException] = []
        self.event = threading.Event()

    def done(self) -> bool:
        return False  # never report done: the batcher must not rely on it to avoid a second resolve

    def set_result(self, value: object) -> None:
        self.results.append(value)
        self.event.set()

    def set_exception(self, error: BaseException) -> None:
        self.errors.append(error)
        self.event.set()


def model(x: np.ndarray) -> np.ndarray:
    # Row-wise: each output row depends only on its own input row, so batching must not change it.
    return x * 3 + x.sum(axis=1, keepdims=True)


def make_config(max_batch_size=8, delay_us=200, preferred=(), levels=0, instances=1, **policy):
    dynamic = {"max_queue_delay_microseconds": delay_us, "preferred_batch_size": list(preferred)}
    if levels:
        dynamic.update(priority_levels=levels, default_priority_level=levels)
    if policy:
        dynamic["default_queue_policy"] = policy
    return build_config(
        name="m",
        inputs=[("x", [-1], "FP32")],
        outputs=[("y", [-1], "FP32")],
        max_batch_size=max_batch_size,
        dynamic_batching=dynamic if max_batch_size else None,
        instances=instances,
    )


class Recorder:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[Pending]] = []
        self.lock = threading.Lock()
        self.delay_s = delay_s

    def __call__(self, batch):
        with self.lock:
            self.batches.append(list(batch))
        if self.delay_s:
            time.sleep(self.delay_s)  # stands in for model compute time
        merged = np.concatenate([p.inputs["x"] for p in batch]) if len(batch) > 1 else batch[0].inputs["x"]
        out = model(merged)
        results, start = [], 0
        for p in batch:
            results.append((p, out[start:start + p.rows], None))
            start += p.rows
        return results


def pending(x: np.ndarray, priority: int = 1) -> Pending:
    return Pending(inputs={"x": x}, rows=x.shape[0], shape_key=(("x", x.shape[1:]),), outputs=None,
                   waiter=CountingWaiter(), priority=priority)


requests_strategy = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from([2, 3]), st.integers(1, 3)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=requests_strategy,
    max_batch_size=st.integers(4, 8),
    instances=st.integers(1, 3),
    delay_us=st.sampled_from([0, 100, 2000]),
    preferred=st.sampled_from([(), (4,), (2, 4)]),
    threads=st.integers(1, 4),
)
def test_batched_equals_unbatched_and_limits_hold(requests, max_batch_size, instances, delay_us, preferred, threads):
    config = make_config(max_batch_size, delay_us, preferred, levels=3, instances=instances)
    recorder = Recorder()
    batcher = DynamicBatcher(config, recorder, label="m")
    rng = np.random.default_rng(len(requests))
    items = [pending(rng.random((rows, width), dtype=np.float32), priority) for rows, width, priority in requests]
    try:
        chunks = [items[i::threads] for i in range(threads)]
        workers = [threading.Thread(target=lambda c=c: [batcher.submit(p) for p in c]) for c in chunks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        for p in items:
            assert p.waiter.event.wait(10), "a request was never resolved"
    finally:
        batcher.close()
    for p in items:
        assert len(p.waiter.results) + len(p.waiter.errors) == 1, "resolved more than once"
        np.testing.assert_allclose(p.waiter.results[0], model(p.inputs["x"]), rtol=1e-6)
    for batch in recorder.batches:
        assert sum(p.rows for p in batch) <= max_batch_size
        assert len({p.shape_key for p in batch}) == 1, "requests with different shapes were merged"
    assert sum(len(b) for b in recorder.batches) == len(items)


def test_requests_wait_for_the_window_and_batch_together():
    config = make_config(max_batch_size=8, delay_us=300_000)  # 300 ms: long enough to be unambiguous
    recorder = Recorder()
    batcher = DynamicBatcher(config, recorder, label="m")
    items = [pending(np.ones((1, 2), np.float32)) for _ in range(3)]
    try:
        for p in items:
            batcher.submit(p)
        for p in items:
            assert p.waiter.event.wait(5)
    finally:
        batcher.close()
    assert [len(b) for b in recorder.batches] == [3]


def test_full_batch_runs_without_waiting_for_the_window():
    config = make_config(max_batch_size=4, delay_us=5_000_000)  # a 5 s window that must not be waited
    recorder = Recorder()
    batcher = DynamicBatcher(config, recorder, label="m")
    items = [pending(np.ones((2, 2), np.float32)) for _ in range(2)]
    started = time.monotonic()
    try:
        for p in items:
            batcher.submit(p)
        for p in items:
            assert p.waiter.event.wait(5)
    finally:
        batcher.close()
    assert time.monotonic() - started < 2.0
    assert [sum(p.rows for p in b) for b in recorder.batches] == [4]


def test_preferred_batch_size_cuts_at_the_window_end():
    config = make_config(max_batch_size=8, delay_us=200_000, preferred=(2, 8))
    recorder = Recorder()
    batcher = DynamicBatcher(config, recorder, label="m")
    items = [pending(np.ones((1, 2), np.float32)) for _ in range(3)]
    try:
        for p in items:
            batcher.submit(p)
        for p in items:
            assert p.waiter.event.wait(5)
    finally:
        batcher.close()
    # 3 rows at the window's end: a preferred batch of 2 runs, then the remaining request.
    assert [len(b) for b in recorder.batches] == [2, 1]


def test_higher_priority_runs_first():
    config = make_config(max_batch_size=1, delay_us=0, levels=2)
    recorder = Recorder(delay_s=0.05)
    batcher = DynamicBatcher(config, recorder, label="m")
    blocker = pending(np.ones((1, 2), np.float32), priority=2)
    low = [pending(np.full((1, 2), 2, np.float32), priority=2) for _ in range(2)]
    high = pending(np.full((1, 2), 9, np.float32), priority=1)
    try:
        batcher.submit(blocker)
        deadline = time.monotonic() + 5
        while not recorder.batches and time.monotonic() < deadline:
            time.sleep(0.001)  # wait for the blocker to occupy the only instance
        for p in low:
            batcher.submit(p)
        batcher.submit(high)
        for p in [blocker, *low, high]:
            assert p.waiter.event.wait(5)
    finally:
        batcher.close()
    order = [b[0] for b in recorder.batches]
    assert order[0] is blocker and order[1] is high


def test_queue_timeout_rejects_with_server_busy():
    config = make_config(max_batch_size=1, delay_us=0, default_timeout_microseconds=20_000, timeout_action="REJECT")
    recorder = Recorder(delay_s=0.2)
    batcher = DynamicBatcher(config, recorder, label="m")
    first, second = pending(np.ones((1, 2), np.float32)), pending(np.ones((1, 2), np.float32))
    try:
        batcher.submit(first)
        batcher.submit(second)
        assert second.waiter.event.wait(5) and first.waiter.event.wait(5)
    finally:
        batcher.close()
    assert first.waiter.results  # it ran
    assert isinstance(second.waiter.errors[0], ServerBusy)
    assert "timed out in the queue" in str(second.waiter.errors[0])


def test_max_queue_size_rejects_at_submit_and_keeps_serving():
    config = make_config(max_batch_size=1, delay_us=0, max_queue_size=1)
    recorder = Recorder(delay_s=0.1)
    batcher = DynamicBatcher(config, recorder, label="m")
    running, queued, rejected = (pending(np.ones((1, 2), np.float32)) for _ in range(3))
    try:
        batcher.submit(running)
        deadline = time.monotonic() + 5
        while not recorder.batches and time.monotonic() < deadline:
            time.sleep(0.001)
        batcher.submit(queued)
        with pytest.raises(ServerBusy, match="queue is full.*max_queue_size"):
            batcher.submit(rejected)
        assert queued.waiter.event.wait(5)
        later = pending(np.ones((1, 2), np.float32))
        batcher.submit(later)
        assert later.waiter.event.wait(5) and later.waiter.results
    finally:
        batcher.close()


def test_max_batch_size_zero_runs_one_request_per_call():
    config = build_config(name="m", inputs=[("x", [2], "FP32")], outputs=[("y", [2], "FP32")], max_batch_size=0)
    recorder = Recorder()
    batcher = DynamicBatcher(config, recorder, label="m")
    items = [Pending(inputs={"x": np.ones(2, np.float32)[None]}, rows=1, shape_key=(), outputs=None,
                     waiter=CountingWaiter()) for _ in range(5)]
    try:
        for p in items:
            batcher.submit(p)
        for p in items:
            assert p.waiter.event.wait(5)
    finally:
        batcher.close()
    assert all(len(b) == 1 for b in recorder.batches) and len(recorder.batches) == 5


def test_without_dynamic_batching_each_request_runs_as_it_came():
    # Triton's default scheduler: a batching model without dynamic_batching never merges requests.
    config = build_config(name="m", inputs=[("x", [-1], "FP32")], outputs=[("y", [-1], "FP32")], max_batch_size=8)
    assert not config.HasField("dynamic_batching")
    recorder = Recorder(delay_s=0.05)
    batcher = DynamicBatcher(config, recorder, label="m")
    items = [pending(np.full((rows, 2), i, np.float32)) for i, rows in enumerate([1, 3, 1, 2])]
    try:
        for p in items:  # the first runs; the others queue behind it
            batcher.submit(p)
        for p in items:
            assert p.waiter.event.wait(5)
    finally:
        batcher.close()
    assert [[p.rows for p in b] for b in recorder.batches] == [[1], [3], [1], [2]]
    for p in items:
        np.testing.assert_array_equal(p.waiter.results[0], model(p.inputs["x"]))


def test_instances_run_batches_concurrently():
    config = make_config(max_batch_size=1, delay_us=0, instances=3)
    recorder = Recorder(delay_s=0.3)
    batcher = DynamicBatcher(config, recorder, label="m")
    items = [pending(np.ones((1, 2), np.float32)) for _ in range(3)]
    started = time.monotonic()
    try:
        for p in items:
            batcher.submit(p)
        for p in items:
            assert p.waiter.event.wait(5)
    finally:
        batcher.close()
    assert time.monotonic() - started < 0.8  # three 0.3 s batches overlapped (serial would be 0.9 s)


def test_close_joins_instance_threads():
    batcher = DynamicBatcher(make_config(instances=2), Recorder(), label="m")
    threads = batcher.threads
    batcher.close()
    assert not any(t.is_alive() for t in threads)


def test_signal_wakes_one_waiter_per_notify_and_times_out():
    """The batcher's condition variable: notify wakes one waiter, costs nothing without one, and a
    wait returns False when its timeout passes."""
    import threading

    from nbserve.serving.batcher import _Signal

    lock = threading.Lock()
    signal = _Signal(lock)
    with lock:
        signal.notify()  # nobody waits: nothing happens
        assert signal.wait(0.01) is False
        assert signal.wait(0) is False
    woken: list[bool] = []

    def waiter() -> None:
        with lock:
            woken.append(signal.wait(30))

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while True:
        with lock:
            if len(signal._waiters) == 2:
                signal.notify()
                break
        assert time.monotonic() < deadline
        time.sleep(0.001)
    deadline = time.monotonic() + 10
    while not woken:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    time.sleep(0.05)
    assert woken == [True]  # one notify, one waiter woken
    with lock:
        signal.notify_all()
    for thread in threads:
        thread.join(10)
    assert woken == [True, True]
