"""nbserve.Dashboard on a real server: models and states, live rate, queue depth, p99, batches, start/stop."""

from __future__ import annotations

import numpy as np
import pytest

import nbserve
from nbserve.bench.run import bench
from nbserve.registry import Registry
from nbserve.serving.server import current_server

from bench_helpers import FAST, SLOW_S, wait_for

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from nbserve.widgets.dashboard import Dashboard  # noqa: E402


@pytest.fixture
def own_server():
    registry = Registry()
    registry.register(lambda x: x * 2, name="double", example=np.ones((1, 4), "float32"), max_batch_size=8)

    def slow(x):
        import time

        time.sleep(SLOW_S)
        return x

    registry.register(slow, name="slow", example=np.ones((1, 4), "float32"), max_batch_size=0)
    server = nbserve.serve(registry, grpc=False, metrics=False)
    yield server
    current_server().stop()  # the one the test left running (start_server replaces it)
    registry.clear()


def _model(reading, name):
    return next(m for m in reading["models"] if m["model"] == name)


def test_dashboard_shows_traffic_as_it_happens(own_server):
    board = Dashboard(own_server, interval_s=0.1, display=False)
    try:
        reading = board.sample()
        assert reading["running"] and {m["model"] for m in reading["models"]} == {"double", "slow"}
        assert _model(reading, "slow")["state"] == "READY" and _model(reading, "slow")["version"] == "1"
        run = bench(own_server, "slow", concurrency=[3], background=True, **{**FAST, "max_windows": 6})

        def busy():
            slow = _model(board.sample(), "slow")
            return slow if slow["requests_per_s"] > 0 and slow["p99_ms"] is not None and slow["queue_depth"] else None

        slow = wait_for(busy, what="the dashboard to see the load")
        run.wait(60)
        # 3 requests in flight on one 20 ms instance: ~50 requests/s, two of them waiting, p99 ~60 ms.
        assert 20 < slow["requests_per_s"] < 80
        assert slow["queue_depth"] in (1, 2)
        assert SLOW_S * 1000 <= slow["p99_ms"] < 3 * SLOW_S * 1000 + 30
        assert slow["batch_sizes"] and set(slow["batch_sizes"]) == {1}
        # The widgets show the same: the table row and the plotted series.
        assert "<td>slow</td>" in board._table.value and "running" in board._title.value
        wait_for(lambda: board.samples > 3, what="the polling thread")
        rate_trace = board.figure.data[board._traces["slow v1"]["rate"]]
        assert len(rate_trace.x) >= 2 and max(rate_trace.y) > 0
    finally:
        board.close()
    assert not board._thread.is_alive()


def test_dashboard_stops_and_starts_the_server(own_server):
    board = Dashboard(own_server, interval_s=0.1, display=False)
    try:
        address = own_server.http_address
        board._stop_button.click()
        assert not own_server.is_running
        assert board.sample()["running"] is False and "stopped" in board._title.value
        assert board._start_button.disabled is False and board._stop_button.disabled is True
        board._start_button.click()
        assert board.server is not own_server and board.server.is_running
        assert board.server.http_address == address  # same ports: clients keep working
        assert board.server.infer("double", {"x": np.ones((1, 4), "float32")})["output_0"].tolist() == [[2.0] * 4]
        assert {m["model"] for m in board.sample()["models"]} == {"double", "slow"}
    finally:
        board.close()


def test_dashboard_of_a_server_in_another_process(registry):
    registry.register(lambda x: x + 1, name="inc", example=np.ones((1, 2), "float32"), max_batch_size=4)
    remote = nbserve.serve(registry, mode="subprocess")
    board = Dashboard(remote, interval_s=0.1, display=False)
    try:
        run = bench(remote, "inc", concurrency=[2], protocol="http", background=True, **FAST)
        inc = wait_for(lambda: (m := _model(board.sample(), "inc"))["requests_per_s"] > 0 and m,
                       what="requests seen over HTTP statistics")
        run.wait(60)
        assert inc["state"] == "READY" and inc["queue_depth"] is None and inc["p99_ms"] is None
    finally:
        board.close()
        remote.stop()
