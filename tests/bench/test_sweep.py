"""nbserve.sweep: every config on a fresh load, the Pareto front, the pick within budget, apply and export."""

from __future__ import annotations

import time

import numpy as np
import pytest

import nbserve
from nbserve.bench.sweeps import config_with, sweep
from nbserve.errors import ConfigError
from nbserve.repository import write_repository

from bench_helpers import FAST

SWEEP = {k: v for k, v in FAST.items() if k != "live"}


def _batched_sleep(x):
    # 5 ms per call whatever the batch: batching multiplies throughput, the queue delay costs latency.
    time.sleep(0.005)
    return x * 3


@pytest.fixture
def model(registry):
    return registry.register(_batched_sleep, name="scorer", example=np.ones((1, 4), "float32"), max_batch_size=4)


def test_sweep_measures_each_config_and_recommends_within_budget(registry, model):
    result = sweep("scorer", registry=registry, max_batch_size=[1, 8], max_queue_delay_microseconds=[0, 2000],
                   concurrency=[8], latency_budget_ms=60, live=False, **SWEEP)
    assert len(result.configs) == 4 and len(result.rows) == 4 and len(result.runs) == 4
    by = {(r["max_batch_size"], r["max_queue_delay_microseconds"]): r for r in result.rows}
    # Each config really ran with its own settings: the server's batches never exceed its maximum.
    for (size, _), row in by.items():
        assert max(row["server_batch_sizes"]) <= size
        assert row["total_sent"] == row["server_total_requests"]
    # A 5 ms model at concurrency 8: batches of 8 give several times the throughput of batches of 1.
    assert by[(8, 0)]["infer_per_s"] > 2.5 * by[(1, 0)]["infer_per_s"]
    best = result.best
    assert best is not None and best["recommended"] and best["pareto"]
    assert best["max_batch_size"] == 8
    assert best["p99_ms"] <= 60
    assert all(r["infer_per_s"] <= best["infer_per_s"] for r in result.rows if r["p99_ms"] <= 60)
    assert "Call .apply()" in result.recommendation()
    frame = result.results
    knobs = {"config", "max_batch_size", "max_queue_delay_microseconds", "instances", "pareto", "recommended"}
    assert knobs <= set(frame)
    # The registered model has not been touched yet.
    assert registry.get("scorer").config.max_batch_size == 4


def test_apply_gives_the_registered_model_the_config_and_export_writes_it(registry, model, tmp_path):
    result = sweep("scorer", registry=registry, max_batch_size=[2, 8], max_queue_delay_microseconds=[500],
                   instances=[2], concurrency=[8], latency_budget_ms=1000, live=False, **SWEEP)
    version = registry.get("scorer").version
    with nbserve.serve(registry, http=False, grpc=False, metrics=False) as server:
        applied = result.apply()
        assert applied.version == version  # in place: same version, same live object
        config = applied.config
        assert config.max_batch_size == result.best["max_batch_size"] == 8
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert config.instance_group[0].count == 2
        # The running server swapped to it and still answers with the same object.
        out = server.infer("scorer", {"x": np.ones((8, 4), "float32")})
        assert out["output_0"].tolist() == (np.ones((8, 4)) * 3).tolist()
        assert server.core.model_config("scorer").max_batch_size == 8
    text = (write_repository(tmp_path / "repo", registry.models()) / "scorer" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in text and "max_queue_delay_microseconds: 500" in text and "count: 2" in text


def test_nothing_within_budget_is_said_and_cannot_be_applied(registry, model):
    result = sweep("scorer", registry=registry, max_batch_size=[4], concurrency=[4], latency_budget_ms=0.001,
                   live=False, **SWEEP)
    assert result.best is None and "No config" in result.recommendation()
    with pytest.raises(ConfigError, match="no config met the latency budget"):
        result.apply()


def test_sweep_plot_draws_points_front_budget_and_pick(registry, model):
    pytest.importorskip("plotly")
    result = sweep("scorer", registry=registry, max_batch_size=[1, 4], concurrency=[2, 4], latency_budget_ms=1000,
                   live=False, **SWEEP)
    figure = result.plot()
    names = [t.name for t in figure.data]
    assert names[:2] == [r["config"] for r in (result.rows[0], result.rows[2])]
    assert "Pareto front" in names and "recommended" in names
    assert len(figure.data[names.index("Pareto front")].x) == len(result.front) >= 1
    assert any(shape.y0 == 1000 for shape in figure.layout.shapes)
    # In a notebook the same drawing grows in place, redrawn after each config.
    pytest.importorskip("ipywidgets")
    from nbserve.bench.sweeps import _LiveSweep

    live = _LiveSweep(result)
    for _ in range(2):
        live.update()
        assert [t.name for t in live.figure.data] == names and len(live.figure.layout.shapes) == 1


def test_configs_the_model_cannot_take_are_refused_before_running(registry, model):
    unbatched = registry.register(lambda x: x, name="plain", example=np.ones((1, 4), "float32"), max_batch_size=0)
    with pytest.raises(ConfigError, match="registered without batching"):
        config_with(unbatched.config, max_batch_size=8)
    with pytest.raises(ConfigError, match="no queue delay"):
        config_with(unbatched.config, max_queue_delay_microseconds=100)
    changed = config_with(model.config, max_batch_size=2, instances=3)
    assert changed.max_batch_size == 2 and changed.instance_group[0].count == 3
    assert model.config.max_batch_size == 4  # a copy
