"""Live plots of a running benchmark: one plotly FigureWidget, updated in place at every tick.

Panels: throughput over time; latency percentiles (p50/p90/p99) over time; the server's queue
versus compute time per request; the batch-size histogram of the current level; and the
latency-throughput curve, one point per finished level. Every tick is one ``batch_update`` (a single
message to the browser); a Stop button ends the run (it only asks: the run's thread halts the load).

The plot listens to a :class:`~nbserve.bench.run.BenchRun` (``run.add_listener``) and is updated from
the run's thread; ipykernel sends widget messages from any thread.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from ..errors import require

__all__ = ["LivePlot", "in_notebook"]

_MAX_POINTS = 300  # per time series (75 s at 4 ticks/s): each update costs the browser the same; run.timeline keeps all


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where widgets can be displayed)."""
    import sys

    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class LivePlot:
    """The live figure of one benchmark run.

    Args:
        run: the BenchRun to follow (the plot registers itself as its listener).
        height: the figure's height in pixels.

    Attributes:
        figure: the ``plotly.graph_objects.FigureWidget``.
        widget: the figure with a status line and a Stop button (what ``show()`` displays).
        ticks: how many timeline points were drawn.
    """

    def __init__(self, run: Any, *, height: int = 760) -> None:
        require("plotly", "notebook", purpose="live benchmark plots")
        widgets = require("ipywidgets", "notebook", purpose="live benchmark plots")
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        self.run = run
        self.ticks = 0
        self._series: dict[str, list[Any]] = {k: [] for k in ("t", "infer", "p50", "p90", "p99", "queue", "compute")}
        self._curve: dict[str, list[Any]] = {"x": [], "p50": [], "p99": [], "text": []}
        base = make_subplots(
            rows=3, cols=2, specs=[[{}, {}], [{}, {}], [{"colspan": 2}, None]],
            subplot_titles=("Throughput (infer/s)", "Latency (ms)", "Server: queue vs compute (ms per request)",
                            "Batch sizes (this level)", "Latency vs throughput (one point per level)"),
            vertical_spacing=0.13, horizontal_spacing=0.08,
        )
        figure = go.FigureWidget(base)
        lines = [
            ("throughput", 1, 1, "#1f77b4"), ("p50", 1, 2, "#2ca02c"), ("p90", 1, 2, "#ff7f0e"),
            ("p99", 1, 2, "#d62728"), ("queue", 2, 1, "#9467bd"), ("compute", 2, 1, "#8c564b"),
        ]
        for name, row, col, color in lines:
            figure.add_trace(go.Scatter(x=[], y=[], mode="lines", name=name, line={"color": color}), row=row, col=col)
        figure.add_trace(go.Bar(x=[], y=[], name="executions", marker={"color": "#17becf"}), row=2, col=2)
        for name, color in (("p50 vs infer/s", "#2ca02c"), ("p99 vs infer/s", "#d62728")):
            figure.add_trace(go.Scatter(x=[], y=[], mode="lines+markers+text", name=name, text=[],
                                        textposition="top center", cliponaxis=False, line={"color": color}),
                             row=3, col=1)
        figure.update_xaxes(title_text="time (s)", row=1, col=1)
        figure.update_xaxes(title_text="time (s)", row=1, col=2)
        figure.update_xaxes(title_text="time (s)", row=2, col=1)
        figure.update_xaxes(title_text="batch size", row=2, col=2)
        figure.update_xaxes(title_text="throughput (infer/s)", row=3, col=1)
        figure.update_yaxes(title_text="ms", row=3, col=1)
        figure.update_layout(height=height, template="plotly_white", title=self._title("starting"),
                             margin={"t": 80, "l": 60, "r": 20, "b": 40}, legend={"orientation": "h", "y": -0.08})
        self.figure = figure
        self._status = widgets.HTML(self._status_html("starting"))
        self._button = widgets.Button(description="Stop", icon="stop", button_style="danger",
                                      tooltip="stop the benchmark (what was measured is kept)")
        self._button.on_click(lambda _: run.stop(timeout_s=0))
        self.widget = widgets.VBox([widgets.HBox([self._button, self._status]), figure])
        run.add_listener(self)

    # --------------------------------------------------------------------- display
    def show(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self) -> None:
        self.show()

    def _title(self, state: str) -> str:
        return f"nbserve.bench — {html.escape(self.run.label)}: {state}"

    def _status_html(self, state: str) -> str:
        return f"<span class='nbserve-bench-status'>{html.escape(state)}</span>"

    # --------------------------------------------------------------------- listener
    def on_tick(self, point: Mapping[str, Any]) -> None:
        series = self._series
        values = {"t": point["t_s"], "infer": point["infer_per_s"], "p50": point["p50_ms"], "p90": point["p90_ms"],
                  "p99": point["p99_ms"], "queue": point["server_queue_ms"], "compute": point["server_compute_ms"]}
        for key, value in values.items():
            series[key].append(value)
            del series[key][:-_MAX_POINTS]
        level = (f"concurrency {point['concurrency']}" if point.get("load") == "concurrency"
                 else f"{point.get('request_rate'):g} req/s ({point.get('distribution')})")
        state = f"{level}, {point['phase']} — {point['infer_per_s']:,.0f} infer/s"
        sizes = point.get("level_batch_sizes") or {}
        self.ticks += 1
        data = self.figure.data
        with self.figure.batch_update():
            for index, key in enumerate(("infer", "p50", "p90", "p99", "queue", "compute")):
                data[index].x = series["t"]
                data[index].y = series[key]
            data[6].x = list(sizes)
            data[6].y = list(sizes.values())
            self.figure.layout.title.text = self._title(state)
        self._status.value = self._status_html(f"running: {state} (tick {self.ticks})")

    def on_level(self, row: Mapping[str, Any]) -> None:
        curve = self._curve
        curve["x"].append(row["infer_per_s"])
        curve["p50"].append(row["p50_ms"])
        curve["p99"].append(row["p99_ms"])
        curve["text"].append(f"c={row['concurrency']}" if row.get("load") == "concurrency"
                             else f"{row.get('request_rate'):g}/s")
        data = self.figure.data
        with self.figure.batch_update():
            data[7].x, data[7].y, data[7].text = curve["x"], curve["p50"], curve["text"]
            data[8].x, data[8].y, data[8].text = curve["x"], curve["p99"], curve["text"]

    def on_end(self, run: Any) -> None:
        state = f"{run.status}, {len(run.rows)} level(s)"
        if run.error is not None:
            state += f": {run.error}"
        with self.figure.batch_update():
            self.figure.layout.title.text = self._title(state)
        self._status.value = self._status_html(state)
        self._button.disabled = True
