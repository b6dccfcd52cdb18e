"""``nbserve.sweep``: benchmark a model under several batching configs and recommend one.

Each combination of ``max_batch_size`` x ``max_queue_delay_microseconds`` x ``instances`` runs on a
fresh load of the model: a private registry holds the model's live runner under that config, a
private in-kernel server serves it, and :func:`nbserve.bench` measures it at every concurrency. The
registered model is not touched until :meth:`SweepResult.apply`.

The result plots throughput against a latency percentile (p99 by default) for every config and
concurrency, draws the Pareto front (no other point has both more throughput and less latency) and
recommends the point with the most throughput whose latency fits ``latency_budget_ms``.
``apply()`` gives the registered model that config in place (same version, same live object), so the
running server swaps to it and ``nbserve.export`` writes it.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, InvalidInput

__all__ = ["sweep", "SweepResult", "config_with", "apply_config", "pareto_front"]

_KNOBS = ("max_batch_size", "max_queue_delay_microseconds", "instances")


def config_with(base: Any, *, max_batch_size: int | None = None, max_queue_delay_microseconds: int | None = None,
                instances: int | None = None) -> Any:
    """A copy of the config ``base`` with the given knobs changed (None keeps the value), validated.

    Raises:
        ConfigError: a change Triton would refuse, or one the model cannot take (batching a model that
            was registered without it, a queue delay on a sequence-batching model, several instance groups).
    """
    from ..config import ModelConfig, validate

    config = ModelConfig()
    config.CopyFrom(base)
    model = base.name
    if max_batch_size is not None:
        if base.max_batch_size == 0 and max_batch_size != 0:
            raise ConfigError("the model was registered without batching: its dims include the batch",
                              model=model, got=f"max_batch_size={max_batch_size}",
                              hint="register it with max_batch_size=N (and dims without the batch) to sweep it")
        if max_batch_size < 1 and base.max_batch_size > 0:
            raise ConfigError("max_batch_size in a sweep must be >= 1 for a batching model", model=model,
                              got=max_batch_size, hint="sweep sizes such as [1, 8, 32, 64]")
        config.max_batch_size = int(max_batch_size)
        # Preferred sizes above the new maximum would be refused; they are a tuning of the old size.
        kept = [s for s in config.dynamic_batching.preferred_batch_size if s <= config.max_batch_size]
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(kept)
    if max_queue_delay_microseconds is not None:
        if config.HasField("sequence_batching"):
            raise ConfigError("the model uses sequence batching; max_queue_delay_microseconds is a dynamic "
                              "batching field", model=model, hint="sweep max_batch_size and instances only")
        if config.max_batch_size == 0:
            raise ConfigError("a model without batching has no queue delay to tune", model=model,
                              hint="register it with max_batch_size=N to sweep max_queue_delay_microseconds")
        config.dynamic_batching.max_queue_delay_microseconds = int(max_queue_delay_microseconds)
    if instances is not None:
        if len(config.instance_group) > 1:
            raise ConfigError("the model has several instance groups; a sweep sets one count",
                              model=model, hint="register it with instances=N")
        if not config.instance_group:
            config.instance_group.add(count=int(instances))
        else:
            config.instance_group[0].count = int(instances)
    return validate(config)


def apply_config(registry: Any, name: str, config: Any) -> Any:
    """Give the registered model ``name`` the config ``config`` in place; returns the RegisteredModel.

    The version number and live object stay; a server following the registry swaps to the new config
    without dropping requests, and an export writes it.
    """
    model = registry.get(name)
    current = model.latest
    updated = dataclasses.replace(current, config=config)
    # Both entries share the runner and whatever it holds (a session, a GPU context): the replaced one
    # must not close them when the registry replaces it, so its close hook moves to the new entry.
    current.close = None
    registry.add(updated)
    return registry.get(name)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (throughput, latency) that no other point beats on both, by throughput.

    >>> pareto_front([(100, 1.0), (200, 2.0), (150, 3.0), (50, 0.5)])
    [3, 0, 1]
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox >= x and oy <= y) and (ox > x or oy < y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _label(knobs: Mapping[str, Any]) -> str:
    parts = []
    if knobs.get("max_batch_size") is not None:
        parts.append(f"batch≤{knobs['max_batch_size']}")
    if knobs.get("max_queue_delay_microseconds") is not None:
        parts.append(f"delay {knobs['max_queue_delay_microseconds']}us")
    if knobs.get("instances") is not None:
        parts.append(f"{knobs['instances']} inst")
    return ", ".join(parts) or "as registered"


class SweepResult:
    """What a sweep measured, the Pareto front and the recommendation.

    Attributes:
        rows: one dict per (config, concurrency): the bench row plus the config's knobs.
        runs: the BenchRun of each config.
        best: the recommended row (None when nothing fits the budget).
        latency: the latency column compared with the budget.
    """

    def __init__(self, model: str, registry: Any, latency_budget_ms: float | None, latency: str) -> None:
        self.model = model
        self.registry = registry
        self.latency_budget_ms = latency_budget_ms
        self.latency = latency
        self.rows: list[dict[str, Any]] = []
        self.runs: list[Any] = []
        self.configs: list[tuple[dict[str, Any], Any]] = []  # (knobs, ModelConfig)
        self.best: dict[str, Any] | None = None
        self.front: list[int] = []

    @property
    def results(self) -> Any:
        """Every measured point as a pandas DataFrame (``pareto`` and ``recommended`` columns included)."""
        from .results import frame

        return frame(self.rows)

    def _update(self) -> None:
        points = [(r["infer_per_s"], r[self.latency]) for r in self.rows if r.get(self.latency) is not None]
        indices = [i for i, r in enumerate(self.rows) if r.get(self.latency) is not None]
        front = {indices[i] for i in pareto_front(points)}
        self.front = sorted(front, key=lambda i: self.rows[i]["infer_per_s"])
        fitting = [r for r in self.rows if r.get(self.latency) is not None and not r.get("errors")
                   and (self.latency_budget_ms is None or r[self.latency] <= self.latency_budget_ms)]
        self.best = max(fitting, key=lambda r: r["infer_per_s"]) if fitting else None
        for i, row in enumerate(self.rows):
            row["pareto"] = i in front
            row["recommended"] = row is self.best

    @property
    def best_config(self) -> Any:
        """The recommended ModelConfig (None when nothing fits the budget)."""
        if self.best is None:
            return None
        return self.configs[self.best["config_index"]][1]

    def apply(self, registry: Any = None) -> Any:
        """Give the registered model the recommended config (in place; export writes it).

        Raises:
            ConfigError: no config fits the latency budget.
        """
        if self.best is None:
            raise ConfigError("no config met the latency budget, so there is nothing to apply", model=self.model,
                              expected=f"{self.latency} <= {self.latency_budget_ms} ms",
                              hint="raise latency_budget_ms, or sweep smaller batches and delays")
        return apply_config(registry if registry is not None else self.registry, self.model, self.best_config)

    def recommendation(self) -> str:
        """One sentence: what to use and why."""
        if self.best is None:
            budget = (f" within {self.latency_budget_ms} ms {self.latency.removesuffix('_ms')}"
                      if self.latency_budget_ms is not None else "")
            return f"No config was measured{budget} without errors."
        best = self.best
        budget = f" within the {self.latency_budget_ms} ms budget" if self.latency_budget_ms is not None else ""
        return (f"{best['config']} at concurrency {best['concurrency']}: {best['infer_per_s']:,.0f} infer/s, "
                f"{self.latency.removesuffix('_ms')} {best[self.latency]:.2f} ms — the most throughput{budget}. "
                "Call .apply() to give the registered model this config.")

    def plot(self) -> Any:
        """Throughput against latency for every point, the Pareto front, the budget and the pick."""
        from .results import _plotly

        go = _plotly()
        figure = go.Figure()
        self._draw(figure, go)
        return figure

    def _draw(self, figure: Any, go: Any) -> None:
        latency = self.latency
        figure.data = []
        by_config: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            if row.get(latency) is not None:
                by_config.setdefault(row["config"], []).append(row)
        for name, rows in by_config.items():
            figure.add_trace(go.Scatter(x=[r["infer_per_s"] for r in rows], y=[r[latency] for r in rows],
                                        mode="markers", name=name, text=[f"c={r['concurrency']}" for r in rows],
                                        marker={"size": 9}))
        front = [self.rows[i] for i in self.front]
        figure.add_trace(go.Scatter(x=[r["infer_per_s"] for r in front], y=[r[latency] for r in front],
                                    mode="lines", name="Pareto front", line={"color": "black", "dash": "dot"}))
        if self.best is not None:
            figure.add_trace(go.Scatter(x=[self.best["infer_per_s"]], y=[self.best[latency]], mode="markers",
                                        name="recommended", marker={"symbol": "star", "size": 18, "color": "gold",
                                                                    "line": {"color": "black", "width": 1}}))
        figure.layout.shapes = []
        figure.layout.annotations = []
        if self.latency_budget_ms is not None:
            # An explicit shape, not add_hline: inside a FigureWidget's batch_update (the live plot)
            # add_hline cannot find the axes yet and raises TypeError (plotly 7.1).
            figure.add_shape(type="line", xref="paper", x0=0, x1=1, yref="y", y0=self.latency_budget_ms,
                             y1=self.latency_budget_ms, line={"dash": "dash", "color": "red"})
            figure.add_annotation(xref="paper", x=1, yref="y", y=self.latency_budget_ms, showarrow=False,
                                  text=f"budget {self.latency_budget_ms} ms", xanchor="right", yanchor="bottom")
        figure.update_layout(title=f"Sweep of {self.model}: throughput vs {latency.removesuffix('_ms')} latency",
                             xaxis_title="throughput (infer/s)", yaxis_title=f"{latency.removesuffix('_ms')} (ms)",
                             template="plotly_white")

    def __repr__(self) -> str:
        return (f"<SweepResult {self.model!r}: {len(self.configs)} configs, {len(self.rows)} points. "
                f"{self.recommendation()}>")

    def _repr_html_(self) -> str:
        head = ("<tr><th>config</th><th>concurrency</th><th>infer/s</th><th>p50 ms</th><th>p99 ms</th>"
                "<th>pareto</th></tr>")
        body = "".join(
            f"<tr><td>{html.escape(r['config'])}</td><td>{r['concurrency']}</td><td>{r['infer_per_s']:,.0f}</td>"
            f"<td>{_ms(r.get('p50_ms'))}</td><td>{_ms(r.get('p99_ms'))}</td>"
            f"<td>{'★' if r.get('recommended') else ('•' if r.get('pareto') else '')}</td></tr>"
            for r in self.rows
        )
        return f"<div><p>{html.escape(self.recommendation())}</p><table>{head}{body}</table></div>"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _as_list(name: str, value: Any) -> list[Any]:
    if value is None:
        return [None]
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise InvalidInput(f"{name} must be a list of whole numbers >= 0", got=value, hint=f"{name}=[1, 8, 32]")
    return values


def sweep(
    model: Any,
    *,
    max_batch_size: int | Sequence[int] | None = None,
    max_queue_delay_microseconds: int | Sequence[int] | None = None,
    instances: int | Sequence[int] | None = None,
    concurrency: int | Sequence[int] = (1, 4, 16),
    latency_budget_ms: float | None = None,
    latency: str = "p99_ms",
    registry: Any = None,
    protocol: str = "inprocess",
    live: bool = True,
    **bench_options: Any,
) -> SweepResult:
    """Benchmark every combination of the given config values on a fresh load of ``model``.

    Args:
        model: a registered model's name (or the RegisteredModel).
        max_batch_size, max_queue_delay_microseconds, instances: the values to try (None keeps the
            registered value); Triton's field names.
        concurrency: the closed-loop levels each config is measured at.
        latency_budget_ms: the recommendation is the most throughput with ``latency`` at or below this.
        latency: the latency column judged against the budget (``p99_ms`` by default).
        registry: where the model is registered (default: ``nbserve.register``'s registry).
        protocol: ``"inprocess"``, ``"http"`` or ``"grpc"``: how each config is measured.
        live: in a notebook, show the throughput-latency plot growing as configs finish.
        **bench_options: passed to :func:`nbserve.bench` (measurement_interval_ms, warmup_s, inputs, ...).

    Returns:
        A :class:`SweepResult`: ``.results``, ``.plot()``, ``.best``, ``.recommendation()``, ``.apply()``.

    Raises:
        ConfigError: a value the model's config cannot take. ModelNotFound: no such model.

    >>> import numpy as np, nbserve
    >>> reg = nbserve.Registry()
    >>> _ = reg.register(lambda x: x + 1, name="inc", example=np.ones((1, 4), "float32"), max_batch_size=8)
    >>> result = sweep("inc", registry=reg, max_batch_size=[4, 8], concurrency=[4], latency_budget_ms=1000,
    ...                measurement_interval_ms=200, warmup_s=0.05, live=False)
    >>> len(result.rows), result.best is not None
    (2, True)
    >>> result.apply().config.max_batch_size == result.best["max_batch_size"]
    True
    """
    from ..registry import Registry, default_registry
    from ..serving.server import Server
    from .run import bench

    registry = registry if registry is not None else default_registry
    name = model if isinstance(model, str) else model.name
    entry = registry.get(name).latest
    for reserved in ("live", "background", "label", "protocol", "concurrency"):
        if reserved in bench_options:
            raise InvalidInput(f"sweep sets {reserved} itself", got=reserved, hint=f"drop {reserved}= from the call")
    grid = [dict(zip(_KNOBS, values)) for values in itertools.product(
        _as_list("max_batch_size", max_batch_size),
        _as_list("max_queue_delay_microseconds", max_queue_delay_microseconds),
        _as_list("instances", instances),
    )]
    result = SweepResult(name, registry, latency_budget_ms, latency)
    for knobs in grid:  # every config is checked before anything runs
        result.configs.append((knobs, config_with(entry.config, **knobs)))
    plot = _LiveSweep(result) if live and _in_notebook() else None
    for index, (knobs, config) in enumerate(result.configs):
        private = Registry()
        # The live runner under the swept config; the private entry owns nothing (close=None), so
        # clearing the private registry never closes the user's model.
        private.add(dataclasses.replace(entry, config=config, close=None))
        server = Server(private, http=protocol == "http", grpc=protocol == "grpc", metrics=False).start()
        try:
            run = bench(server, name, concurrency=concurrency, protocol=protocol, live=False,
                        label=_label(knobs), **bench_options)
        finally:
            server.stop()
        result.runs.append(run)
        for row in run.rows:
            result.rows.append({"config": _label(knobs), "config_index": index,
                                **{k: (v if v is not None else _current(config, k)) for k, v in knobs.items()},
                                **row})
        result._update()
        if plot is not None:
            plot.update()
    return result


def _current(config: Any, knob: str) -> int:
    if knob == "max_batch_size":
        return int(config.max_batch_size)
    if knob == "max_queue_delay_microseconds":
        return int(config.dynamic_batching.max_queue_delay_microseconds)
    return int(config.instance_group[0].count) if config.instance_group else 1


def _in_notebook() -> bool:
    from .live import in_notebook

    return in_notebook()


class _LiveSweep:
    """The sweep's plot, redrawn in place after each config."""

    def __init__(self, result: SweepResult) -> None:
        from ..errors import require

        require("plotly", "notebook", purpose="live sweep plots")
        import plotly.graph_objects as go
        from IPython.display import display

        self.result = result
        self.go = go
        self.figure = go.FigureWidget()
        self.figure.update_layout(title=f"Sweep of {result.model}: running…", template="plotly_white")
        display(self.figure)

    def update(self) -> None:
        with self.figure.batch_update():
            self.result._draw(self.figure, self.go)
