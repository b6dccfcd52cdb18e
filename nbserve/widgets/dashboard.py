"""``nbserve.Dashboard(server)``: a live view of a running server, with start and stop.

A table of models and versions with their state, request rate, queue depth, p99 latency and average
batch size, plus plotly charts over time (request rate, p99 latency, queue depth) and the batch-size
histogram since the dashboard opened. A daemon thread samples the server every ``interval_s`` and
updates the widgets (one ``batch_update`` per sample); ``close()`` ends it.

Sources: for the in-kernel server the core itself (exact, cheap; queue depth from each version's
batcher, p99 from the core's recent request durations); for any other server (a subprocess server, a
Triton) its HTTP statistics and repository index, which have no queue depth and no percentiles, so
those cells show "-".
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ServerStateError, require

__all__ = ["Dashboard"]

_HISTORY = 600  # samples kept per series


class _CoreSource:
    """Reads an in-kernel server through its core."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def running(self) -> bool:
        return bool(getattr(self.server, "is_running", False)) and self.server.core is not None

    def sample(self, since_ns: int) -> list[dict[str, Any]]:
        core = self.server.core
        states = {(e["name"], e["version"]): e for e in core.repository_index()}
        rows = []
        for loaded in core.loaded_versions():
            stats = loaded.stats.to_json(loaded.name, loaded.version)
            durations = core.recent_latencies(loaded.name, loaded.version, since_ns)
            rows.append(_row(loaded.name, str(loaded.version), "READY", "", stats,
                             getattr(loaded.batcher, "queue_depth", None), durations))
            states.pop((loaded.name, str(loaded.version)), None)
        for (name, version), entry in sorted(states.items()):
            if entry["state"] != "READY":
                rows.append(_row(name, version, entry["state"], entry.get("reason", ""), None, None, None))
        return rows


class _HttpSource:
    """Reads any KServe v2 server with Triton's statistics and repository extensions over HTTP."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def _json(self, method: str, path: str) -> Any:
        import http.client
        import json

        host, _, port = self.server.http_address.rpartition(":")
        connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=5)
        token = getattr(self.server, "token", None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            connection.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
            response = connection.getresponse()
            return json.loads(response.read() or b"null")
        finally:
            connection.close()

    def running(self) -> bool:
        try:
            self._json("GET", "/v2/health/live")
        except (OSError, ValueError):
            return False
        return True

    def sample(self, since_ns: int) -> list[dict[str, Any]]:
        stats = {(s["name"], str(s["version"])): s for s in self._json("GET", "/v2/models/stats")["model_stats"]}
        rows = []
        for entry in self._json("POST", "/v2/repository/index"):
            key = (entry["name"], str(entry.get("version", "")))
            rows.append(_row(key[0], key[1], entry.get("state", ""), entry.get("reason", ""), stats.get(key),
                             None, None))
        return rows


def _row(name: str, version: str, state: str, reason: str, stats: Mapping[str, Any] | None, queue: int | None,
         durations_ns: Any) -> dict[str, Any]:
    inference = (stats or {}).get("inference_stats") or {}
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in (stats or {}).get("batch_stats") or []}
    durations = np.asarray(durations_ns if durations_ns is not None else [], dtype=np.float64)
    return {
        "model": name,
        "version": version,
        "state": state,
        "reason": reason,
        "requests": int((inference.get("success") or {}).get("count", 0)),
        "failures": int((inference.get("fail") or {}).get("count", 0)),
        "inferences": int((stats or {}).get("inference_count", 0)),
        "executions": int((stats or {}).get("execution_count", 0)),
        "queue_depth": queue,
        "p99_ms": float(np.percentile(durations, 99)) / 1e6 if durations.size else None,
        "batch_sizes": batches,
    }


class Dashboard:
    """A live dashboard of a server (see module docstring).

    Args:
        server: an ``nbserve.serve()`` server (in this kernel), or anything with an ``http_address``
            serving Triton's statistics (a subprocess server, a ``TritonServer``).
        interval_s: seconds between samples.
        display: show the widget at once (in a notebook); else display ``dashboard.widget`` yourself.

    >>> import numpy as np, nbserve
    >>> reg = nbserve.Registry()
    >>> _ = reg.register(lambda x: x + 1, name="inc", example=np.ones((1, 2), "float32"), max_batch_size=4)
    >>> server = nbserve.serve(reg, http=False, grpc=False, metrics=False)
    >>> board = Dashboard(server, interval_s=0.05, display=False)
    >>> _ = server.infer("inc", {"x": np.ones((1, 2), "float32")})
    >>> [(m["model"], m["state"]) for m in board.sample()["models"]]
    [('inc', 'READY')]
    >>> board.close(); server.stop()
    """

    def __init__(self, server: Any, *, interval_s: float = 0.5, display: bool = True) -> None:
        widgets = require("ipywidgets", "notebook", purpose="the server dashboard")
        require("plotly", "notebook", purpose="the server dashboard")
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.server = server
        self.interval_s = interval_s
        self.samples = 0
        self._lock = threading.Lock()
        self._previous: dict[tuple[str, str], tuple[int, int, int, int]] = {}  # key -> (ns, requests, infer, exec)
        self._previous_ns = time.monotonic_ns()
        self._started_ns = self._previous_ns
        self._baseline: dict[tuple[str, str], dict[int, int]] = {}
        self._history: dict[str, dict[str, list[Any]]] = {}
        self._stop = threading.Event()

        self._title = widgets.HTML()
        self._table = widgets.HTML()
        self._start_button = widgets.Button(description="Start", icon="play", button_style="success",
                                            tooltip="start the server again (same registry and ports)")
        self._stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger",
                                           tooltip="stop the server (in-flight requests finish first)")
        self._start_button.on_click(lambda _: self._safely(self.start_server))
        self._stop_button.on_click(lambda _: self._safely(self.stop_server))
        base = make_subplots(rows=2, cols=2, subplot_titles=("Requests/s", "p99 latency (ms)", "Queue depth",
                                                             "Batch sizes (since opened)"),
                             vertical_spacing=0.16, horizontal_spacing=0.08)
        self.figure = go.FigureWidget(base)
        self.figure.update_layout(height=520, template="plotly_white", margin={"t": 40, "l": 50, "r": 20, "b": 30},
                                  legend={"orientation": "h", "y": -0.1}, barmode="group")
        self._traces: dict[str, dict[str, int]] = {}
        self._go = go
        self.widget = widgets.VBox([widgets.HBox([self._start_button, self._stop_button, self._title]),
                                    self._table, self.figure])
        self._error = ""
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="nbserve-dashboard", daemon=True)
        self._thread.start()
        if display:
            from IPython.display import display as show

            show(self.widget)

    # --------------------------------------------------------------------- sampling
    def _source(self) -> Any:
        from ..serving.server import Server

        return _CoreSource(self.server) if isinstance(self.server, Server) else _HttpSource(self.server)

    def sample(self) -> dict[str, Any]:
        """One reading: ``running``, and per model version its state, ``requests_per_s``,
        ``queue_depth``, ``p99_ms`` (over the time since the previous sample), ``avg_batch_size`` and
        ``batch_sizes`` (executions per batch size since the dashboard opened)."""
        with self._lock:
            now = time.monotonic_ns()
            source = self._source()
            running = source.running()
            models = source.sample(self._previous_ns) if running else []
            seconds = max((now - self._previous_ns) / 1e9, 1e-9)
            for model in models:
                key = (model["model"], model["version"])
                before = self._previous.get(key, (now, model["requests"], model["inferences"], model["executions"]))
                requests = model["requests"] - before[1]
                executions = model["executions"] - before[3]
                model["requests_per_s"] = max(requests, 0) / seconds if key in self._previous else 0.0
                model["avg_batch_size"] = ((model["inferences"] - before[2]) / executions) if executions > 0 else None
                baseline = self._baseline.setdefault(key, dict(model["batch_sizes"]))
                model["batch_sizes"] = {size: n - baseline.get(size, 0) for size, n in model["batch_sizes"].items()
                                        if n - baseline.get(size, 0) > 0}
                self._previous[key] = (now, model["requests"], model["inferences"], model["executions"])
            self._previous_ns = now
            self.samples += 1
            return {"t_s": (now - self._started_ns) / 1e9, "running": running, "models": models}

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception as exc:  # a server that went away mid-sample: show it, keep polling
                self._error = f"{type(exc).__name__}: {exc}"

    def refresh(self) -> dict[str, Any]:
        """Take a sample and draw it; returns the sample."""
        reading = self.sample()
        self._draw(reading)
        return reading

    # --------------------------------------------------------------------- drawing
    def _draw(self, reading: Mapping[str, Any]) -> None:
        server = self.server
        state = "running" if reading["running"] else "stopped"
        where = " · ".join(html.escape(str(getattr(server, a))) for a in ("http_url", "grpc_url")
                           if reading["running"] and getattr(server, a.replace("url", "port"), None))
        error = f" <span style='color:#b00'>{html.escape(self._error)}</span>" if self._error else ""
        self._title.value = (f"<b>nbserve server</b> <span class='nbserve-dashboard-state'>{state}</span> "
                             f"{where}{error}")
        self._start_button.disabled = reading["running"]
        self._stop_button.disabled = not reading["running"]
        self._table.value = _table_html(reading["models"])
        t = reading["t_s"]
        with self.figure.batch_update():
            for model in reading["models"]:
                if model["state"] != "READY":
                    continue
                name = f"{model['model']} v{model['version']}"
                series = self._history.setdefault(name, {"t": [], "rate": [], "p99": [], "queue": []})
                for key, value in (("t", t), ("rate", model["requests_per_s"]), ("p99", model["p99_ms"]),
                                   ("queue", model["queue_depth"])):
                    series[key].append(value)
                    del series[key][:-_HISTORY]
                traces = self._traces.get(name) or self._add_traces(name)
                data = self.figure.data
                for key, index in traces.items():
                    if key == "batch":
                        data[index].x = list(model["batch_sizes"])
                        data[index].y = list(model["batch_sizes"].values())
                    else:
                        data[index].x = series["t"]
                        data[index].y = series[key]

    def _add_traces(self, name: str) -> dict[str, int]:
        go = self._go
        color = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"][len(self._traces) % 6]
        indices = {}
        for key, row, col in (("rate", 1, 1), ("p99", 1, 2), ("queue", 2, 1)):
            self.figure.add_trace(go.Scatter(x=[], y=[], mode="lines", name=name, legendgroup=name,
                                             showlegend=key == "rate", line={"color": color}), row=row, col=col)
            indices[key] = len(self.figure.data) - 1
        self.figure.add_trace(go.Bar(x=[], y=[], name=name, legendgroup=name, showlegend=False,
                                     marker={"color": color}), row=2, col=2)
        indices["batch"] = len(self.figure.data) - 1
        self._traces[name] = indices
        return indices

    # --------------------------------------------------------------------- control
    def _safely(self, action: Any) -> None:
        try:
            action()
            self._error = ""
        except Exception as exc:  # a button must show its failure, not swallow it
            self._error = f"{type(exc).__name__}: {exc}"
        self.refresh()

    def stop_server(self) -> None:
        """Stop the server (it drains in-flight requests)."""
        self.server.stop()

    def start_server(self) -> Any:
        """Start a stopped in-kernel server again with its registry and ports; the dashboard follows it.

        Raises:
            ServerStateError: the server is running, or is not an in-kernel server.
        """
        old = self.server
        if getattr(old, "is_running", False):
            raise ServerStateError("the server is already running")
        from ..serving.server import Server, serve

        if not isinstance(old, Server):
            raise ServerStateError("only an in-kernel server can be restarted from the dashboard",
                                   hint="start it again the way you started it")
        options = dict(host=old.host, token=old.token, max_body_bytes=old.max_body_bytes,
                       http=old.http_port is not None, grpc=old.grpc_port is not None,
                       metrics=old.metrics_port is not None)
        try:
            new = serve(old.registry, http_port=old.http_port or 0, grpc_port=old.grpc_port or 0,
                        metrics_port=old.metrics_port or 0, **options)
        except ServerStateError:  # the old ports were taken meanwhile: take free ones
            new = serve(old.registry, **options)
        with self._lock:
            self.server = new
            self._previous.clear()
            self._baseline.clear()
        return new

    def close(self) -> None:
        """Stop sampling and close the widgets (the server keeps running). Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)
        self.widget.close()
        self.figure.close()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return f"<nbserve.Dashboard of {self.server!r}>"


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _table_html(models: list[dict[str, Any]]) -> str:
    head = ("<tr><th>model</th><th>version</th><th>state</th><th>req/s</th><th>queue</th><th>p99 ms</th>"
            "<th>avg batch</th><th>requests</th><th>failures</th></tr>")
    rows = "".join(
        f"<tr class='nbserve-dashboard-row' data-model='{html.escape(m['model'])}'>"
        f"<td>{html.escape(m['model'])}</td><td>{html.escape(m['version'])}</td>"
        f"<td title='{html.escape(m.get('reason') or '')}'>{html.escape(m['state'])}</td>"
        f"<td>{_cell(m.get('requests_per_s'), '{:,.0f}')}</td><td>{_cell(m.get('queue_depth'), '{:d}')}</td>"
        f"<td>{_cell(m.get('p99_ms'), '{:.2f}')}</td><td>{_cell(m.get('avg_batch_size'), '{:.2f}')}</td>"
        f"<td>{m['requests']:,}</td><td>{m['failures']:,}</td></tr>"
        for m in models
    )
    return f"<table class='nbserve-dashboard'><thead>{head}</thead><tbody>{rows}</tbody></table>"
