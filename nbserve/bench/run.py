"""``nbserve.bench``: measure a model under load, level by level, the way perf_analyzer does.

For each load level (a concurrency, or a request rate) the run starts the load, lets it warm up,
then measures windows of ``measurement_interval_ms`` until the last ``stability_windows`` windows
agree within ``stability_percentage`` (throughput and average latency) or ``max_windows`` were
measured; the level's figures are those of the last ``stability_windows`` windows together. Around
every window the server's statistics are read, so each row also has the server's own queue and
compute times, average batch size and batch-size histogram over the same time.

Every ``tick_s`` the run collects what the generator measured and calls its listeners with one point
of the timeline (the live plot is one). Counts are exact per level: ``total_sent`` requests were
handed to the transport and ``server_total_requests`` is what the server's statistics counted
between the level's start and its end (after every answer came back).

The orchestration runs in the calling thread, or in a daemon thread with ``background=True``; the
load itself runs in a thread (in-process API) or a child process (HTTP, gRPC): see
:mod:`.generator`. ``BenchRun.stop()`` ends it early and leaves no thread or process behind.
"""

from __future__ import annotations

import dataclasses
import html
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ._engine import Load, Records
from .measure import PERCENTILES, ServerSnapshot, is_stable, summarize

__all__ = ["BenchRun", "BenchSettings", "bench", "auto_processes"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """How a run measures; validated once, at construction."""

    measurement_interval_ms: float = 1000.0
    warmup_s: float = 0.5
    stability_percentage: float = 10.0
    stability_windows: int = 3
    max_windows: int = 10
    tick_s: float = 0.25
    halt_timeout_s: float = 10.0
    batch_size: float = 1  # rows per request (an average when the given inputs differ)

    def __post_init__(self) -> None:
        checks = [
            (self.measurement_interval_ms > 0, "measurement_interval_ms must be > 0", "1000"),
            (self.warmup_s >= 0, "warmup_s must be >= 0", "0.5"),
            (self.stability_percentage > 0, "stability_percentage must be > 0", "10"),
            (self.stability_windows >= 1, "stability_windows must be >= 1", "3"),
            (self.max_windows >= self.stability_windows, "max_windows must be >= stability_windows", "10"),
            (self.tick_s > 0, "tick_s must be > 0", "0.25"),
            (self.halt_timeout_s > 0, "halt_timeout_s must be > 0", "10"),
        ]
        for ok, what, example in checks:
            if not ok:
                raise InvalidInput(what, hint=f"for example {what.split()[0]}={example}")

    def window_ticks(self) -> tuple[int, float]:
        """(ticks per window, seconds per tick): windows are a whole number of ticks."""
        interval_s = self.measurement_interval_ms / 1000
        ticks = max(1, round(interval_s / self.tick_s))
        return ticks, interval_s / ticks


class BenchRun:
    """One benchmark: its settings, results so far, and control (stop, wait).

    Attributes:
        rows: one dict per finished load level (``results`` is them as a DataFrame).
        window_rows: one dict per measured window (``windows``).
        timeline_rows: one dict per tick (``timeline``): what the live plot draws.
        errors: distinct error messages of failed requests, with counts.
        status: "running", "done", "stopped" or "failed"; ``error`` holds the failure.
    """

    def __init__(self, *, label: str, model: str, protocol: str, settings: Mapping[str, Any]) -> None:
        self.label = label
        self.model = model
        self.protocol = protocol
        self.settings = dict(settings)
        self.rows: list[dict[str, Any]] = []
        self.window_rows: list[dict[str, Any]] = []
        self.timeline_rows: list[dict[str, Any]] = []
        self.errors: dict[str, int] = {}
        self.status = "running"
        self.error: BaseException | None = None
        self.live_plot: Any = None
        self._listeners: list[Any] = []
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --------------------------------------------------------------------- control
    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def stop(self, timeout_s: float = 60.0) -> BenchRun:
        """End the run now: the level in progress halts, its generator thread/process ends.

        Idempotent; returns the run (its rows hold what finished, plus the partial level).
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        return self

    def wait(self, timeout_s: float | None = None) -> BenchRun:
        """Block until the run ends; re-raise what made it fail.

        Raises:
            TimeoutError: still running after ``timeout_s``.
        """
        if not self._done.wait(timeout_s):
            raise TimeoutError(f"the benchmark is still running after {timeout_s} s; call .stop() to end it")
        if self.error is not None:
            raise self.error
        return self

    def add_listener(self, listener: Any) -> None:
        """Call ``listener.on_tick(point)``, ``.on_level(row)`` and ``.on_end(run)`` as the run goes
        (from the run's thread); a listener that raises is dropped with a warning."""
        self._listeners.append(listener)

    def _notify(self, method: str, value: Any) -> None:
        for listener in list(self._listeners):
            callback = getattr(listener, method, None)
            if callback is None:
                continue
            try:
                callback(value)
            except Exception as exc:  # a broken plot must not end the benchmark
                self._listeners.remove(listener)
                warnings.warn(f"nbserve.bench: a listener failed and was removed: {exc!r}", RuntimeWarning,
                              stacklevel=2)

    # --------------------------------------------------------------------- results
    @property
    def results(self) -> Any:
        """One row per load level, as a pandas DataFrame."""
        from .results import frame

        return frame(self.rows)

    @property
    def windows(self) -> Any:
        """One row per measured window, as a pandas DataFrame."""
        from .results import frame

        return frame(self.window_rows)

    @property
    def timeline(self) -> Any:
        """One row per tick (what the live plot shows), as a pandas DataFrame."""
        from .results import frame

        return frame(self.timeline_rows)

    def plot(self, *others: BenchRun, latency: str = "p99_ms") -> Any:
        """The latency-throughput curve of this run (and of ``others``, to compare), as a plotly Figure."""
        from .results import compare

        return compare([self, *others], latency=latency)

    def save(self, path: str | Path) -> Path:
        """Write the results: ``.json`` keeps everything (settings, windows, timeline), ``.csv`` the rows."""
        from .results import save

        return save(self, path)

    @classmethod
    def load(cls, path: str | Path) -> BenchRun:
        """A finished run read back from :meth:`save`'s file."""
        from .results import load

        return load(path)

    def table(self) -> str:
        """The rows as a perf_analyzer-like text table."""
        from .table import format_table

        return format_table(self.rows)

    def __repr__(self) -> str:
        return f"<BenchRun {self.label!r} {self.status}, {len(self.rows)} level(s)>"

    def _repr_html_(self) -> str:
        from .table import html_table

        errors = "".join(f"<li><code>{html.escape(m)}</code> × {n}</li>" for m, n in self.errors.items())
        return (f"<div><b>nbserve.bench</b> {html.escape(self.label)} — {self.status}"
                f"{html_table(self.rows)}{'<ul>' + errors + '</ul>' if errors else ''}</div>")


# ----------------------------------------------------------------------------- the orchestration
class _Runner:
    """Runs the levels of one BenchRun (see module docstring)."""

    def __init__(self, run: BenchRun, target: Any, generator: Any, loads: Sequence[Load], settings: BenchSettings,
                 model: str) -> None:
        self.run = run
        self.target = target
        self.generator = generator
        self.loads = list(loads)
        self.settings = settings
        self.model = model
        self.started_ns = time.monotonic_ns()

    def __call__(self) -> None:
        run = self.run
        try:
            for load in self.loads:
                if run._stop.is_set():
                    break
                self._level(load)
            run.status = "stopped" if run._stop.is_set() else "done"
        except KeyboardInterrupt:  # an interrupted cell keeps what was measured
            run._stop.set()
            run.status = "stopped"
        except BaseException as exc:
            run.status = "failed"
            run.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self.close()
            run._done.set()
            run._notify("on_end", run)

    def close(self) -> None:
        generator, self.generator = self.generator, None
        if generator is not None:
            generator.close()
        self.target.close()

    # --------------------------------------------------------------------- one level
    def _level(self, load: Load) -> None:
        settings, run = self.settings, self.run
        level = _level_fields(load)
        before = self.target.statistics(self.model)
        self.generator.start(load)
        state = _LevelState(before, time.monotonic_ns())
        ticks, tick_s = settings.window_ticks()
        windows: list[dict[str, Any]] = []
        marks: list[_Mark] = []  # per measured window: its bounds, snapshots and latencies
        try:
            if settings.warmup_s > 0:
                self._ticks(state, level, "warmup", max(1, round(settings.warmup_s / tick_s)), tick_s)
            while len(windows) < settings.max_windows and not run._stop.is_set():
                start_snapshot, start_ns = state.snapshot, state.tick_ns
                if not self._ticks(state, level, "measure", ticks, tick_s):
                    break
                window, mark = self._window(state, start_ns, start_snapshot, len(windows), level)
                windows.append(window)
                marks.append(mark)
                run.window_rows.append(window)
                if is_stable(windows, percentage=settings.stability_percentage, count=settings.stability_windows):
                    break
        except KeyboardInterrupt:  # Ctrl-C in a cell: this level keeps its windows, the run ends
            run._stop.set()
        finally:
            final = self.generator.halt(settings.halt_timeout_s)
            state.add(final)
            self._count_errors(final)
        after = self._settled_statistics(before, state.sent)
        if windows:
            row = self._row(level, windows, marks, state, before, after)
            run.rows.append(row)
            run._notify("on_level", row)

    def _ticks(self, state: _LevelState, level: dict[str, Any], phase: str, count: int, tick_s: float) -> bool:
        """Wait ``count`` ticks, collecting records and a statistics snapshot at each; False if stopped."""
        for _ in range(count):
            deadline = state.tick_ns + int(tick_s * 1e9)
            if self.run._stop.wait(max(deadline - time.monotonic_ns(), 0) / 1e9):
                return False
            previous_ns, previous_snapshot = state.tick_ns, state.snapshot
            # Snapshot first, then take: every request that ended before the snapshot is in hand.
            state.snapshot = self.target.statistics(self.model)
            state.tick_ns = time.monotonic_ns()
            taken = self.generator.take()
            state.add(taken)
            self._timeline_point(state, level, phase, taken, previous_ns, previous_snapshot)
        return True

    def _timeline_point(self, state: _LevelState, level: dict[str, Any], phase: str, taken: Records,
                        previous_ns: int, previous_snapshot: ServerSnapshot) -> None:
        seconds = (state.tick_ns - previous_ns) / 1e9
        summary = summarize(taken.ok[:, 0], taken.ok[:, 1], duration_s=seconds,
                            rows_per_request=self.settings.batch_size, errors=len(taken.failed))
        server = state.snapshot.delta(previous_snapshot)
        level_server = state.snapshot.delta(state.before)
        point = {
            "t_s": (state.tick_ns - self.started_ns) / 1e9,
            **level,
            "phase": phase,
            "infer_per_s": summary["infer_per_s"],
            "requests_per_s": summary["requests_per_s"],
            **{f"p{p}_ms": summary[f"p{p}_ms"] for p in PERCENTILES},
            "errors": summary["errors"],
            "server_queue_ms": server["server_queue_ms"],
            "server_compute_ms": _compute_ms(server),
            "server_avg_batch_size": server["server_avg_batch_size"],
            "level_batch_sizes": level_server["server_batch_sizes"],
        }
        self.run.timeline_rows.append(point)
        self._count_errors(taken)
        self.run._notify("on_tick", point)

    def _count_errors(self, records: Records) -> None:
        for message, n in records.messages.items():
            self.run.errors[message] = self.run.errors.get(message, 0) + n

    def _window(self, state: _LevelState, start_ns: int, start_snapshot: ServerSnapshot, index: int,
                level: dict[str, Any]) -> tuple[dict[str, Any], _Mark]:
        end_ns = state.tick_ns
        ok, failed = state.ok(), state.failed()
        in_window = (ok[:, 1] >= start_ns) & (ok[:, 1] < end_ns)
        failed_in_window = int(((failed[:, 1] >= start_ns) & (failed[:, 1] < end_ns)).sum())
        duration_s = (end_ns - start_ns) / 1e9
        summary = summarize(ok[in_window, 0], ok[in_window, 1], duration_s=duration_s,
                            rows_per_request=self.settings.batch_size, errors=failed_in_window)
        window = {
            **level,
            "window": index,
            "start_s": (start_ns - self.started_ns) / 1e9,
            "duration_s": duration_s,
            **summary,
            **state.snapshot.delta(start_snapshot),
        }
        mark = _Mark(start_ns, end_ns, start_snapshot, state.snapshot, ok[in_window, 1] - ok[in_window, 0])
        return window, mark

    def _settled_statistics(self, before: ServerSnapshot, sent: int) -> ServerSnapshot:
        """The statistics once they count every request sent: a server may count an answer a moment
        after sending it (Triton does), so poll briefly; nbserve counts before answering."""
        deadline = time.monotonic() + 1.0
        while True:
            after = self.target.statistics(self.model)
            if after.requests - before.requests >= sent or time.monotonic() > deadline:
                return after
            if self.run._stop.wait(0.01):
                return after

    def _row(self, level: dict[str, Any], windows: list[dict[str, Any]], marks: list[_Mark],
             state: _LevelState, before: ServerSnapshot, after: ServerSnapshot) -> dict[str, Any]:
        settings = self.settings
        count = settings.stability_windows
        used, used_marks = windows[-count:], marks[-count:]
        lat_ns = np.concatenate([m.latencies_ns for m in used_marks])
        duration_s = sum(w["duration_s"] for w in used)
        summary = summarize(np.zeros_like(lat_ns), lat_ns, duration_s=duration_s,
                            rows_per_request=settings.batch_size, errors=sum(w["errors"] for w in used))
        start_ns, end_ns = used_marks[0].start_ns, used_marks[-1].end_ns
        every = np.concatenate([state.ok(), state.failed()])
        sent_in_windows = int(((every[:, 0] >= start_ns) & (every[:, 0] < end_ns)).sum())
        return {
            "label": self.run.label,
            "protocol": self.run.protocol,
            "model": self.model,
            **level,
            **summary,
            "sent_per_s": sent_in_windows / duration_s if duration_s > 0 else 0.0,
            "windows": len(windows),
            "stable": is_stable(windows, percentage=settings.stability_percentage, count=count),
            "batch_size": settings.batch_size,
            **used_marks[-1].end_snapshot.delta(used_marks[0].start_snapshot),
            "total_sent": state.sent,
            "total_ok": state.ok_count,
            "total_failed": state.failed_count,
            "total_dropped": state.dropped,
            "server_total_requests": after.requests - before.requests,
        }


@dataclasses.dataclass
class _Mark:
    """A measured window's bounds, server snapshots and latencies (kept out of the table rows)."""

    start_ns: int
    end_ns: int
    start_snapshot: ServerSnapshot
    end_snapshot: ServerSnapshot
    latencies_ns: np.ndarray


def _compute_ms(server: Mapping[str, Any]) -> float | None:
    parts = [server.get(f"server_compute_{name}_ms") for name in ("input", "infer", "output")]
    return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None


def _level_fields(load: Load) -> dict[str, Any]:
    if load.mode == "concurrency":
        return {"load": "concurrency", "concurrency": int(load.value), "request_rate": None, "distribution": None}
    return {"load": "rate", "concurrency": None, "request_rate": float(load.value), "distribution": load.distribution}


class _LevelState:
    """What one level collected so far."""

    def __init__(self, before: ServerSnapshot, started_ns: int) -> None:
        self.before = before
        self.snapshot = before
        self.tick_ns = started_ns
        self._ok: list[np.ndarray] = []
        self._failed: list[np.ndarray] = []
        self.sent = self.dropped = self.ok_count = self.failed_count = 0

    def add(self, records: Records) -> None:
        self._ok.append(records.ok)
        self._failed.append(records.failed)
        self.sent += records.sent
        self.dropped += records.dropped
        self.ok_count += len(records.ok)
        self.failed_count += len(records.failed)

    def ok(self) -> np.ndarray:
        if len(self._ok) > 1:
            self._ok = [np.concatenate(self._ok)]
        return self._ok[0] if self._ok else np.empty((0, 2), np.int64)

    def failed(self) -> np.ndarray:
        if len(self._failed) > 1:
            self._failed = [np.concatenate(self._failed)]
        return self._failed[0] if self._failed else np.empty((0, 2), np.int64)


# ----------------------------------------------------------------------------- the public entry
def _loads(concurrency: Any, request_rate: Any, distribution: str, max_outstanding: int, seed: int) -> list[Load]:
    def as_list(value: Any) -> list[float]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]
        return list(value)

    try:
        if request_rate is not None:
            return [Load("rate", float(r), distribution, seed, max_outstanding) for r in as_list(request_rate)]
        levels = as_list(concurrency)
        if not levels or any(int(c) != c or c < 1 for c in levels):
            raise ValueError("concurrency levels must be whole numbers >= 1")
        return [Load("concurrency", int(c), seed=seed, max_outstanding=max_outstanding) for c in levels]
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"bad load levels: {exc}", got=request_rate if request_rate is not None else concurrency,
                           hint="concurrency=[1, 4, 16], or request_rate=[100, 500] with "
                           'distribution="constant" or "poisson"') from None


def auto_processes(protocol: str, loads: Sequence[Load]) -> int:
    """How many generator processes a run gets by default.

    One, except for gRPC closed loops above concurrency 8: there a process per 8 slots, up to the
    CPU count and 4. A Python gRPC client spends about 60 us of CPU per call in grpc's C core (the
    HTTP client about 15 us), and in a closed loop the server waits while one process works through
    a batch of answers under one GIL. Measured against Triton at concurrency 16 on 2 cores, two
    processes gave 5,500-8,300 infer/s where one gave 4,200-6,500, with the server's batches 1.3-1.8x
    larger.
    """
    import os

    if protocol != "grpc":
        return 1
    deepest = max((int(load.value) for load in loads if load.mode == "concurrency"), default=1)
    return max(1, min(4, os.cpu_count() or 1, -(-deepest // 8)))


def bench(
    server_or_url: Any,
    model: str,
    concurrency: int | Sequence[int] = (1, 4, 16),
    *,
    request_rate: float | Sequence[float] | None = None,
    distribution: str = "constant",
    protocol: str | None = None,
    version: int | str | None = None,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    batch_size: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    measurement_interval_ms: float = 1000.0,
    warmup_s: float = 0.5,
    stability_percentage: float = 10.0,
    stability_windows: int = 3,
    max_windows: int = 10,
    processes: int | None = None,
    max_outstanding: int = 1024,
    timeout_s: float | None = None,
    token: str | None = None,
    label: str | None = None,
    seed: int = 0,
    tick_s: float = 0.25,
    live: bool = True,
    background: bool = False,
) -> BenchRun:
    """Benchmark ``model`` at each load level and return the run (its ``results`` DataFrame has one
    row per level).

    Args:
        server_or_url: an ``nbserve.serve()`` server, a subprocess server, a ``TritonServer``, or the
            URL of any KServe v2 server (``"http://host:8000"``, ``"grpc://host:8001"``).
        model: the model name.
        concurrency: closed-loop levels: requests kept in flight.
        request_rate: open-loop levels in requests/s (replaces ``concurrency``).
        distribution: open-loop arrivals, ``"constant"`` or ``"poisson"``.
        protocol: ``"inprocess"`` (default for an in-kernel server), ``"http"`` or ``"grpc"``.
        version: a model version (default: the server's choice).
        inputs: one input dict or a list to cycle through (default: random data from the signature).
        batch_size: rows per request when the model batches; shapes: dims of variable-size inputs.
        measurement_interval_ms, warmup_s, stability_percentage, stability_windows, max_windows:
            perf_analyzer's measurement settings (see the module docstring).
        processes: generator processes for HTTP/gRPC; default: one, and for gRPC at a concurrency above 8
            one per 8 slots up to the CPU count and 4 (see :func:`auto_processes`).
        max_outstanding: open loop: the most requests in flight (later ones count as dropped).
        timeout_s: per-request deadline (gRPC); token: bearer token (default: the server's).
        label: the run's name in tables and plots; seed: random inputs and Poisson arrivals.
        tick_s: how often the run collects measurements and updates the live plot.
        live: show live plotly plots when running in a notebook.
        background: return at once; the run continues in a thread (``.wait()``, ``.stop()``).

    Returns:
        The :class:`BenchRun` (finished unless ``background``).

    Raises:
        InvalidInput: bad settings or inputs. ModelNotFound: the server does not know the model.
        ServerStateError: the server cannot be reached. MissingDependency: live plots without plotly.

    >>> import numpy as np, nbserve
    >>> reg = nbserve.Registry()
    >>> _ = reg.register(lambda x: x * 2, name="double", example=np.ones((1, 4), "float32"), max_batch_size=8)
    >>> with nbserve.serve(reg, http=False, grpc=False, metrics=False) as server:
    ...     run = bench(server, "double", concurrency=[2], measurement_interval_ms=200, warmup_s=0.1, live=False)
    >>> row = run.rows[0]
    >>> row["concurrency"], row["total_sent"] == row["server_total_requests"], row["p99_ms"] > 0
    (2, True, True)
    """
    from .generator import make_generator
    from .inputs import batched as batched_signature
    from .inputs import request_inputs
    from .target import resolve
    from ._transports import TransportSpec, encode_grpc, encode_http

    settings = BenchSettings(measurement_interval_ms=measurement_interval_ms, warmup_s=warmup_s,
                             stability_percentage=stability_percentage, stability_windows=stability_windows,
                             max_windows=max_windows, tick_s=tick_s, batch_size=batch_size)
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise InvalidInput("processes must be a whole number >= 1", got=processes, hint="processes=1")
    loads = _loads(concurrency, request_rate, distribution, max_outstanding, seed)
    target = resolve(server_or_url, protocol, token=token)
    if processes is None:
        processes = auto_processes(target.protocol, loads)
    try:  # until the runner owns them, the target's connections are closed here on failure
        version_text = "" if version in (None, "") else str(version)
        metadata = target.metadata(model, version_text)
        max_batch = target.max_batch_size(model, version_text)
        data = request_inputs(metadata, data=inputs, batch_size=batch_size, shapes=shapes, max_batch_size=max_batch,
                              seed=seed)
        if inputs is not None:
            # Rows per request come from the data given (perf_analyzer counts inferences as rows).
            batched = max_batch > 0 if max_batch is not None else batched_signature(metadata)
            rows = [int(next(iter(d.values())).shape[0]) if batched and d else 1 for d in data]
            settings = dataclasses.replace(settings, batch_size=sum(rows) / len(rows))
        if target.protocol == "http":
            payloads: tuple[Any, ...] = tuple(encode_http(model, version_text, target.address, d, target.token)
                                              for d in data)
        elif target.protocol == "grpc":
            payloads = tuple(encode_grpc(model, version_text, d) for d in data)
        else:
            payloads = tuple(data)
        spec = TransportSpec(protocol=target.protocol, model=model, address=target.address, version=version_text,
                             payloads=payloads, token=target.token, timeout_s=timeout_s)
        run = BenchRun(
            label=label or f"{model} ({target.protocol})", model=model, protocol=target.protocol,
            settings={**dataclasses.asdict(settings), "target": target.label, "processes": processes,
                      "distribution": distribution, "version": version_text, "seed": seed,
                      "levels": [dataclasses.asdict(load) for load in loads]},
        )
        live_plot = None
        if live:
            from .live import LivePlot, in_notebook

            if in_notebook():
                live_plot = LivePlot(run)  # before the generator: a missing plotly fails with nothing to undo
        generator = make_generator(spec, core=target.core, processes=processes)
    except BaseException:
        target.close()
        raise
    runner = _Runner(run, target, generator, loads, settings, model)
    if live_plot is not None:
        run.live_plot = live_plot
        try:
            live_plot.show()
        except BaseException:
            runner.close()
            raise
    if background:
        run._thread = threading.Thread(target=runner, name="nbserve-bench", daemon=True)
        run._thread.start()
        return run
    runner()
    if run.error is not None:
        raise run.error
    return run
