"""Pure pieces of the benchmark: percentiles, stability, server statistics, inputs, tables, Pareto."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbserve.bench.inputs import request_inputs
from nbserve.bench.measure import ServerSnapshot, is_stable, summarize
from nbserve.bench.sweeps import pareto_front
from nbserve.bench.table import format_table
from nbserve.errors import InvalidInput


# ----------------------------------------------------------------------------- summaries
def test_summarize_percentiles_and_rates():
    latencies_ms = np.arange(1, 101, dtype=np.float64)  # 1..100 ms
    starts = np.zeros(100, np.int64)
    summary = summarize(starts, (latencies_ms * 1e6).astype(np.int64), duration_s=2.0, rows_per_request=4, errors=3)
    assert summary["requests"] == 100 and summary["errors"] == 3
    assert summary["requests_per_s"] == 50.0 and summary["infer_per_s"] == 200.0
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["avg_ms"] == pytest.approx(50.5) and summary["max_ms"] == 100.0


def test_summarize_without_requests():
    empty = np.empty(0, np.int64)
    summary = summarize(empty, empty, duration_s=1.0)
    assert summary["requests"] == 0 and summary["p99_ms"] is None and summary["infer_per_s"] == 0.0


@pytest.mark.parametrize("throughputs, latencies, stable", [
    ([100, 101, 99], [1.0, 1.02, 0.99], True),
    ([100, 130, 99], [1.0, 1.0, 1.0], False),       # throughput varies more than 10 %
    ([100, 100, 100], [1.0, 1.5, 1.0], False),      # latency varies more than 10 %
    ([50, 100, 101, 99], [9, 1.0, 1.0, 1.0], True),  # only the last three count
    ([100, 100], [1.0, 1.0], False),                # not enough windows yet
])
def test_stability_is_perf_analyzers_rule(throughputs, latencies, stable):
    windows = [{"requests_per_s": t, "avg_ms": lat} for t, lat in zip(throughputs, latencies)]
    assert is_stable(windows, percentage=10, count=3) is stable


# ----------------------------------------------------------------------------- server statistics
def _stats(success, fail, queue_ns, infer_ns, inferences, executions, batches, as_text=False):
    value = str if as_text else int
    return {"model_stats": [{
        "name": "m", "version": "1", "inference_count": value(inferences), "execution_count": value(executions),
        "inference_stats": {
            "success": {"count": value(success), "ns": value(success * 1000)},
            "fail": {"count": value(fail), "ns": "0"},
            "queue": {"count": value(success), "ns": value(queue_ns)},
            "compute_input": {"count": value(success), "ns": value(0)},
            "compute_infer": {"count": value(success), "ns": value(infer_ns)},
            "compute_output": {"count": value(success), "ns": value(0)},
        },
        "batch_stats": [{"batch_size": value(size), "compute_infer": {"count": value(n), "ns": "0"}}
                        for size, n in batches.items()],
    }, {"name": "other", "version": "1", "inference_count": 99, "execution_count": 99}]}


@pytest.mark.parametrize("as_text", [False, True], ids=["http-json", "grpc-json"])
def test_server_snapshot_delta(as_text):
    earlier = ServerSnapshot.from_json(_stats(10, 1, 10_000_000, 5_000_000, 10, 10, {1: 10}, as_text), "m")
    later = ServerSnapshot.from_json(_stats(30, 2, 50_000_000, 25_000_000, 30, 15, {1: 12, 4: 3, 2: 1}, as_text), "m")
    delta = later.delta(earlier)
    assert delta["server_requests"] == 21 and delta["server_failures"] == 1
    assert delta["server_queue_ms"] == pytest.approx(2.0)          # 40 ms over 20 requests
    assert delta["server_compute_infer_ms"] == pytest.approx(1.0)
    assert delta["server_avg_batch_size"] == pytest.approx(4.0)    # 20 inferences in 5 executions
    assert delta["server_batch_sizes"] == {1: 2, 2: 1, 4: 3}


def test_a_reloaded_model_counts_from_zero():
    before = ServerSnapshot.from_json(_stats(100, 0, 0, 0, 100, 100, {1: 100}), "m")
    after = ServerSnapshot.from_json(_stats(7, 0, 0, 0, 7, 7, {1: 7}), "m")  # counters restarted
    assert after.delta(before)["server_requests"] == 7


# ----------------------------------------------------------------------------- inputs
def test_inputs_from_a_signature_with_text_and_variable_dims():
    meta = {"name": "m", "inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
                                    {"name": "text", "datatype": "BYTES", "shape": [-1, 1]},
                                    {"name": "mask", "datatype": "BOOL", "shape": [-1, 3]}]}
    (data,) = request_inputs(meta, batch_size=4, shapes={"ids": [16]}, max_batch_size=8, seed=1)
    assert data["ids"].shape == (4, 16) and data["ids"].dtype == np.int64
    assert data["text"].shape == (4, 1) and data["text"].dtype == object
    assert all(isinstance(t, bytes) and b" " in t for t in data["text"].ravel())
    assert data["mask"].dtype == np.bool_
    (again,) = request_inputs(meta, batch_size=4, shapes={"ids": [16]}, max_batch_size=8, seed=1)
    assert np.array_equal(again["ids"], data["ids"])  # seeded


def test_user_inputs_take_the_models_dtype_and_are_checked():
    meta = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}
    (data,) = request_inputs(meta, data={"x": [[1, 2]]})
    assert data["x"].dtype == np.float32
    with pytest.raises(InvalidInput, match="expected FP32, got FP64"):
        request_inputs(meta, data={"x": np.ones((1, 2))})
    with pytest.raises(InvalidInput, match="unknown input 'y'"):
        request_inputs(meta, data={"y": [[1, 2]]})
    with pytest.raises(InvalidInput, match="max_batch_size"):
        request_inputs(meta, batch_size=16, max_batch_size=8)
    with pytest.raises(InvalidInput, match="does not fit"):
        request_inputs(meta, shapes={"x": [3]})


@given(st.lists(st.tuples(st.floats(1, 1e5), st.floats(0.01, 100)), min_size=1, max_size=30))
def test_pareto_front_is_the_set_of_undominated_points(points):
    front = pareto_front(points)
    assert front == sorted(front, key=lambda i: points[i][0])
    for i, (x, y) in enumerate(points):
        dominated = any(ox >= x and oy <= y and (ox > x or oy < y) for ox, oy in points)
        assert (i in front) is (not dominated)


def test_table_prints_like_perf_analyzer():
    rows = [{"load": "concurrency", "concurrency": c, "infer_per_s": 1000.0 * c, "p50_ms": 0.5, "p90_ms": 0.6,
             "p95_ms": 0.7, "p99_ms": 0.9, "avg_ms": 0.55, "errors": 0, "server_queue_ms": 0.1,
             "server_compute_infer_ms": 0.2, "server_avg_batch_size": 1.0, "stable": True} for c in (1, 4)]
    text = format_table(rows)
    assert text.splitlines()[0].split()[:3] == ["Concurrency", "Infer/s", "p50"]
    assert "Concurrency: 4, throughput: 4000.0 infer/sec, latency 550 usec" in text
    assert json.dumps(rows)  # rows are plain data


# ----------------------------------------------------------------------------- optional extras
def test_the_bench_api_imports_no_notebook_library():
    import subprocess
    import sys

    probe = ("import sys, nbserve; nbserve.bench; nbserve.sweep; import nbserve.bench.run, nbserve.bench.generator; "
             "print(sorted({'pandas', 'plotly', 'ipywidgets', 'IPython'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("library, use", [
    ("pandas", lambda run: run.results),
    ("plotly", lambda run: run.plot()),
    ("plotly", lambda run: __import__("nbserve.bench.live", fromlist=["LivePlot"]).LivePlot(run)),
])
def test_a_missing_notebook_library_names_the_extra(monkeypatch, library, use):
    from nbserve.bench.run import BenchRun
    from nbserve.errors import MissingDependency

    run = BenchRun(label="r", model="m", protocol="inprocess", settings={})
    monkeypatch.setitem(__import__("sys").modules, library, None)  # as if it were not installed
    with pytest.raises(MissingDependency, match=r'pip install "nbserve\[notebook\]"'):
        use(run)


def test_generator_processes_by_default():
    import os

    from nbserve.bench._engine import Load
    from nbserve.bench.run import auto_processes

    def closed(*levels):
        return [Load("concurrency", c) for c in levels]

    assert auto_processes("http", closed(1, 64)) == 1
    assert auto_processes("grpc", closed(1, 4, 8)) == 1
    assert auto_processes("grpc", closed(1, 16)) == min(2, os.cpu_count())
    assert auto_processes("grpc", closed(256)) == min(4, os.cpu_count())
    assert auto_processes("grpc", [Load("rate", 5000.0)]) == 1
