"""The load generator: its counts are the server's, its rates are the ones asked for, and it stops clean."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import nbserve
from nbserve.errors import ServerStateError
from nbserve.bench._engine import Load, Records, arrival_gaps_ns
from nbserve.bench import _grpc_core
from nbserve.bench._transports import TransportSpec, encode_grpc, encode_http
from nbserve.bench.generator import LocalGenerator
from nbserve.bench.run import bench

from bench_helpers import FAST, bench_threads, generator_processes, wait_for


def _counts(row):
    return row["total_sent"], row["total_ok"], row["total_failed"], row["server_total_requests"]


# ----------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("protocol", ["inprocess", "http", "grpc"])
def test_closed_loop_counts_equal_the_servers_statistics(server, protocol):
    before = server.core.model_statistics("double")["model_stats"][0]["inference_stats"]["success"]["count"]
    run = bench(server, "double", concurrency=[1, 4], protocol=protocol, **FAST)
    after = server.core.model_statistics("double")["model_stats"][0]["inference_stats"]["success"]["count"]
    assert [r["concurrency"] for r in run.rows] == [1, 4]
    for row in run.rows:
        sent, ok, failed, server_count = _counts(row)
        assert sent > 0 and failed == 0
        assert sent == ok == server_count  # exactly: every request sent is one the server counted
        # The measured windows are a part of the level, and the server saw the same requests in them.
        assert 0 < row["requests"] <= ok
        assert row["server_requests"] == pytest.approx(row["requests"], rel=0.05, abs=8)
    assert after - before == sum(r["total_sent"] for r in run.rows)
    assert run.status == "done" and not run.errors


@pytest.mark.parametrize("protocol", ["inprocess", "http"])
def test_open_loop_counts_equal_the_servers_statistics(server, protocol):
    run = bench(server, "double", request_rate=[300], protocol=protocol, **FAST)
    (row,) = run.rows
    sent, ok, failed, server_count = _counts(row)
    assert sent == ok == server_count and failed == 0 and row["total_dropped"] == 0
    assert row["load"] == "rate" and row["request_rate"] == 300


def test_failed_requests_are_counted_on_both_sides(server):
    # Every third request fails in the model: the client's failures are the server's failures.
    inputs = [{"x": np.ones((1, 2), "float32")}, {"x": np.ones((1, 2), "float32")}, {"x": -np.ones((1, 2), "float32")}]
    before = server.core.model_statistics("flaky")["model_stats"][0]["inference_stats"]["fail"]["count"]
    run = bench(server, "flaky", concurrency=[1], protocol="http", inputs=inputs, **FAST)
    after = server.core.model_statistics("flaky")["model_stats"][0]["inference_stats"]["fail"]["count"]
    (row,) = run.rows
    assert row["total_failed"] == after - before > 0
    assert row["total_sent"] == row["total_ok"] + row["total_failed"] == row["server_total_requests"]
    assert row["total_failed"] in (row["total_sent"] // 3, row["total_sent"] // 3 + 1)
    (message,) = run.errors
    assert "HTTP 500" in message and "negative input" in message


def _spec(server, protocol: str, engine: str = "auto") -> TransportSpec:
    x = np.ones((1, 4), "float32")
    if protocol == "grpc":
        return TransportSpec(protocol="grpc", model="double", address=server.grpc_address,
                             payloads=(encode_grpc("double", "", {"x": x}),), grpc_engine=engine)
    return TransportSpec(protocol="inprocess", model="double", payloads=({"x": x},))


def _success_count(server) -> int:
    return server.core.model_statistics("double")["model_stats"][0]["inference_stats"]["success"]["count"]


@pytest.mark.parametrize("engine", ["core", "aio"])
def test_both_grpc_engines_count_exactly(server, engine):
    # "core" drives grpc's C core directly (the default where it can); "aio" is the fallback.
    if engine == "core" and not _grpc_core.available():
        pytest.skip("grpc's C-core layer is not usable with this grpcio")
    before = _success_count(server)
    generator = LocalGenerator(_spec(server, "grpc", engine))
    parts: list[Records] = []
    try:
        assert isinstance(generator._host, _grpc_core.CoreGrpcHost) is (engine == "core")
        generator.start(Load("concurrency", 4))
        wait_for(lambda: parts.append(generator.take()) or sum(len(p.ok) for p in parts) >= 300, what="300 answers")
        parts.append(generator.halt())
        generator.start(Load("rate", 300.0))  # the next level on the same generator
        wait_for(lambda: parts.append(generator.take()) or sum(len(p.ok) for p in parts) >= 400, what="100 more")
        parts.append(generator.halt())
    finally:
        generator.close()
    total = Records.merge(parts)
    assert total.sent == len(total.ok) == _success_count(server) - before and len(total.failed) == 0


# ----------------------------------------------------------------------------- open loop rate
@pytest.mark.parametrize("distribution", ["constant", "poisson"])
@pytest.mark.parametrize("protocol", ["inprocess", "grpc"])
def test_open_loop_rate_accuracy(server, distribution, protocol):
    rate = 400.0
    generator = LocalGenerator(_spec(server, protocol), server.core)
    parts: list[Records] = []
    try:
        generator.start(Load("rate", rate, distribution, seed=3))

        def enough() -> bool:
            parts.append(generator.take())
            return sum(p.sent for p in parts) >= 600

        wait_for(enough, what="600 requests")
        parts.append(generator.halt())
    finally:
        generator.close()
    total = Records.merge(parts)
    starts = np.sort(np.concatenate([total.ok[:, 0], total.failed[:, 0]]))
    achieved = (len(starts) - 1) / ((starts[-1] - starts[0]) / 1e9)
    # Constant: the schedule is cumulative (a late wake-up sends what was due), so the mean rate is
    # the one asked for. Poisson: ~600 exponential gaps from a seeded schedule; 4 standard errors.
    assert achieved == pytest.approx(rate, rel=0.03 if distribution == "constant" else 0.16)
    assert total.sent == len(total.ok) + len(total.failed) and total.dropped == 0


def test_open_loop_schedules():
    constant = list(itertools.islice(arrival_gaps_ns(Load("rate", 500.0)), 5000))
    assert set(constant) == {2e6}
    gaps = np.array(list(itertools.islice(arrival_gaps_ns(Load("rate", 500.0, "poisson", seed=7)), 20000)))
    # Exponential with mean 2 ms: mean and standard deviation equal, 1 - 1/e of the gaps below the mean.
    assert gaps.mean() == pytest.approx(2e6, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    assert (gaps < gaps.mean()).mean() == pytest.approx(1 - np.exp(-1), abs=0.01)
    again = list(itertools.islice(arrival_gaps_ns(Load("rate", 500.0, "poisson", seed=7)), 100))
    assert again == gaps[:100].tolist()  # seeded: the same schedule every run


def test_bench_reports_the_achieved_rate(server):
    run = bench(server, "double", request_rate=[250, 500], protocol="inprocess", **FAST)
    for row in run.rows:
        assert row["sent_per_s"] == pytest.approx(row["request_rate"], rel=0.1)
        assert row["requests_per_s"] == pytest.approx(row["request_rate"], rel=0.15)


# ----------------------------------------------------------------------------- stopping
@pytest.mark.parametrize("protocol", ["inprocess", "http", "grpc"])
def test_stopping_mid_run_leaves_no_thread_or_process(server, protocol):
    assert not bench_threads() and not generator_processes()
    run = bench(server, "double", concurrency=[2, 4, 8], protocol=protocol, background=True,
                measurement_interval_ms=500, warmup_s=0.2, max_windows=50, stability_percentage=0.001, live=False)
    wait_for(lambda: len(run.window_rows) >= 1, what="one measured window")
    assert run.running and bench_threads()
    assert len(generator_processes()) == (0 if protocol == "inprocess" else 1)
    run.stop()
    assert not run.running and run.status == "stopped"
    assert bench_threads() == []
    assert generator_processes() == []
    # What was measured is kept: the interrupted level has its row (not stable: it never could be).
    assert len(run.rows) == 1 and run.rows[0]["concurrency"] == 2 and not run.rows[0]["stable"]
    assert run.rows[0]["total_sent"] == run.rows[0]["server_total_requests"]
    run.stop()  # idempotent


def test_a_finished_run_leaves_nothing_behind(server):
    bench(server, "double", concurrency=[1], protocol="grpc", **FAST)
    assert bench_threads() == [] and generator_processes() == []


def test_several_generator_processes_share_the_load(server):
    run = bench(server, "double", concurrency=[4], protocol="http", processes=2, **FAST)
    (row,) = run.rows
    assert row["total_sent"] == row["server_total_requests"] > 0
    assert generator_processes() == []


def test_a_dead_server_is_reported_not_hung(models):
    with nbserve.serve(models, grpc=False, metrics=False) as doomed:
        run = bench(doomed, "double", concurrency=[2], protocol="http", background=True,
                    measurement_interval_ms=300, warmup_s=0.1, max_windows=20, stability_percentage=0.001,
                    live=False)
        wait_for(lambda: len(run.timeline_rows) >= 2, what="the load to run")
    # The server is gone: the run ends, says why, and cleans up.
    with pytest.raises(ServerStateError, match="the server stopped during the benchmark"):
        run.wait(30)
    assert run.status == "failed"
    assert not run.running and bench_threads() == [] and generator_processes() == []


def test_an_interrupted_foreground_run_keeps_what_it_measured(server):
    # Ctrl-C in a notebook raises KeyboardInterrupt in the thread running the benchmark: here it
    # comes from a listener at the 8th tick, in the middle of the first level's windows.
    from nbserve.bench.run import BenchRun, BenchSettings, _Runner
    from nbserve.bench.target import resolve

    class Interrupt:
        ticks = 0

        def on_tick(self, point):
            self.ticks += 1
            if self.ticks == 8:
                raise KeyboardInterrupt

    settings = BenchSettings(measurement_interval_ms=100, warmup_s=0.05, stability_windows=2, max_windows=50,
                             stability_percentage=1e-9, tick_s=0.05)
    run = BenchRun(label="interrupted", model="double", protocol="http", settings={})
    run.add_listener(Interrupt())
    spec = TransportSpec(protocol="http", model="double", address=server.http_address,
                         payloads=(encode_http("double", "", server.http_address, {"x": np.ones((1, 4), "float32")}),))
    from nbserve.bench.generator import make_generator

    runner = _Runner(run, resolve(server, "http"), make_generator(spec), [Load("concurrency", 2)], settings, "double")
    runner()  # returns: the interrupt is handled, not raised
    assert run.status == "stopped" and run.error is None and not run.running
    (row,) = run.rows  # the interrupted level, with the windows it measured
    assert 1 <= row["windows"] < 50 and row["total_sent"] == row["server_total_requests"]
    assert bench_threads() == [] and generator_processes() == []
