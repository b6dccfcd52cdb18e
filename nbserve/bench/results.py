"""Benchmark results as pandas DataFrames and files, and runs compared on one plot.

``save`` writes ``.json`` (everything: settings, rows, windows, timeline, errors; no pandas needed)
or ``.csv`` (the rows; the batch-size histogram as JSON text in its cell); ``load`` reads either back
into a finished :class:`~nbserve.bench.run.BenchRun`. ``compare`` draws the latency-throughput
curves of several runs (two batching configs, HTTP against gRPC, ...) on one plotly figure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, require

__all__ = ["frame", "save", "load", "compare", "curve_figure"]

_DICT_COLUMNS = ("server_batch_sizes", "level_batch_sizes")


def _pandas() -> Any:
    return require("pandas", "notebook", purpose="benchmark result tables")


def _plotly() -> Any:
    require("plotly", "notebook", purpose="benchmark plots")
    import plotly.graph_objects as go

    return go


def frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Rows as a DataFrame (columns in first-seen order)."""
    return _pandas().DataFrame([dict(r) for r in rows])


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()  # NumPy scalars
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _histogram(value: Any) -> dict[int, int]:
    if isinstance(value, str):
        value = json.loads(value) if value else {}
    if not isinstance(value, Mapping):
        return {}
    return {int(k): int(v) for k, v in value.items()}


def save(run: Any, path: str | Path) -> Path:
    """Write ``run`` to ``path`` (``.json`` or ``.csv``); returns the path.

    Raises:
        InvalidInput: another suffix.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".json":
        document = {
            "nbserve_bench": 1,
            "label": run.label,
            "model": run.model,
            "protocol": run.protocol,
            "status": run.status,
            "settings": run.settings,
            "rows": run.rows,
            "windows": run.window_rows,
            "timeline": run.timeline_rows,
            "errors": run.errors,
        }
        target.write_text(json.dumps(_jsonable(document), indent=1))
        return target
    if suffix == ".csv":
        table = frame(run.rows)
        for column in _DICT_COLUMNS:
            if column in table:
                table[column] = [json.dumps(_jsonable(v)) for v in table[column]]
        table.to_csv(target, index=False)
        return target
    raise InvalidInput("results are saved as .json or .csv", got=str(target),
                       hint='run.save("results.json") keeps everything; .csv keeps the table')


def load(path: str | Path) -> Any:
    """A finished BenchRun read back from a file :func:`save` wrote."""
    from .run import BenchRun

    source = Path(path)
    suffix = source.suffix.lower()
    if suffix == ".json":
        document = json.loads(source.read_text())
        if document.get("nbserve_bench") != 1:
            raise InvalidInput("this JSON file was not written by BenchRun.save", got=str(source))
        run = BenchRun(label=document["label"], model=document["model"], protocol=document["protocol"],
                       settings=document.get("settings") or {})
        run.rows = [_fix_row(r) for r in document.get("rows") or []]
        run.window_rows = [_fix_row(r) for r in document.get("windows") or []]
        run.timeline_rows = [_fix_row(r) for r in document.get("timeline") or []]
        run.errors = dict(document.get("errors") or {})
        run.status = document.get("status", "done")
    elif suffix == ".csv":
        table = _pandas().read_csv(source)
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                for r in table.to_dict("records")]
        first = rows[0] if rows else {}
        run = BenchRun(label=str(first.get("label", source.stem)), model=str(first.get("model", "")),
                       protocol=str(first.get("protocol", "")), settings={})
        run.rows = [_fix_row(r) for r in rows]
        run.status = "done"
    else:
        raise InvalidInput("results are read from .json or .csv", got=str(source))
    run._done.set()
    return run


def _fix_row(row: Mapping[str, Any]) -> dict[str, Any]:
    fixed = dict(row)
    for column in _DICT_COLUMNS:
        if column in fixed:
            fixed[column] = _histogram(fixed[column])
    return fixed


def _level_text(row: Mapping[str, Any]) -> str:
    if row.get("load") == "rate":
        return f"{row.get('request_rate'):g} req/s"
    return f"c={row.get('concurrency')}"


def curve_figure(*, title: str = "Latency vs throughput", latency: str = "p99_ms") -> Any:
    """An empty latency-throughput figure with nbserve's axes."""
    go = _plotly()
    figure = go.Figure()
    figure.update_layout(title=title, xaxis_title="throughput (infer/s)",
                         yaxis_title=f"{latency.replace('_ms', '')} latency (ms)", template="plotly_white",
                         legend={"orientation": "h", "y": -0.2})
    return figure


def compare(runs: Sequence[Any], *, latency: str = "p99_ms", labels: Sequence[str] | None = None) -> Any:
    """The latency-throughput curves of ``runs`` on one plotly Figure (one line per run, a point per level).

    Args:
        runs: BenchRuns (or paths of saved runs).
        latency: the latency column for the y axis (``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms``, ``avg_ms``).
        labels: names for the legend (default: each run's label).
    """
    go = _plotly()
    loaded = [load(r) if isinstance(r, (str, Path)) else r for r in runs]
    figure = curve_figure(latency=latency)
    for i, run in enumerate(loaded):
        rows = [r for r in run.rows if r.get(latency) is not None]
        name = labels[i] if labels is not None and i < len(labels) else run.label
        figure.add_trace(go.Scatter(
            x=[r["infer_per_s"] for r in rows], y=[r[latency] for r in rows], mode="lines+markers+text",
            name=name, text=[_level_text(r) for r in rows], textposition="top center",
        ))
    return figure
