"""Start, stop and talk to the embedded server, in the kernel or as a subprocess.

``nbserve.serve()`` starts the server inside the kernel: a daemon thread owns a new event loop (the
kernel's own loop is never touched) that runs the HTTP, gRPC and metrics endpoints; the models run in
their batchers' instance threads. ``serve()`` again replaces the running server without leaking a
thread, a socket or a process. ``serve(mode="subprocess")`` snapshots the registry to a repository and
runs ``nbserve serve REPO`` as a child process (see :mod:`.child`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import html
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ServerStateError
from ..registry import Registry, default_registry
from .core import InferenceCore

__all__ = ["Server", "serve", "current_server", "LOCAL_HOSTS", "DEFAULT_MAX_BODY_BYTES"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_BODY_BYTES = 64 * 2**20


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Addresses:
    """Address properties shared by the thread and subprocess servers."""

    host: str
    http_port: int | None
    grpc_port: int | None
    metrics_port: int | None

    @property
    def http_address(self) -> str:
        """``host:port``, as ``tritonclient.http.InferenceServerClient(url=...)`` takes it."""
        return f"{_url_host(self.host)}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{_url_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.grpc_address}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.metrics_port}/metrics"

    def client(self, protocol: str = "http") -> Any:
        """A ready-made tritonclient client for this server (``"http"`` or ``"grpc"``)."""
        if protocol == "http":
            import tritonclient.http as httpclient

            return httpclient.InferenceServerClient(url=self.http_address)
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            return grpcclient.InferenceServerClient(url=self.grpc_address)
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed: it takes 10-15% less CPU per HTTP request than asyncio's loop here.
    Nothing in nbserve rests on the loop's timers (the batch window lives in the batcher's threads),
    so uvloop's millisecond timer rounding does not change batching."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Server(_Addresses):
    """The in-kernel server: a daemon thread with its own event loop.

    Use :func:`serve` rather than constructing it: ``serve`` also replaces a running server.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        repository: str | Path | None = None,
        http: bool = True,
        grpc: bool = True,
        metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else default_registry
        self.host = host
        self._requested = {"http": http_port if http else None, "grpc": grpc_port if grpc else None,
                           "metrics": metrics_port if metrics else None}
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.repository = repository
        self.http_port = self.grpc_port = self.metrics_port = None
        self.core: InferenceCore | None = None
        self.mode = "thread"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._started_at: float | None = None
        self.ready_s: float | None = None

    # --------------------------------------------------------------------- lifecycle
    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._ready.is_set() and self._error is None

    def start(self, timeout_s: float = 30.0) -> Server:
        """Start the server thread and wait until every endpoint listens."""
        if self._thread is not None:
            raise ServerStateError("this server was already started", hint="call nbserve.serve() for a new one")
        started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="nbserve-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise ServerStateError("the server did not start in time", expected=f"ready within {timeout_s} s")
        if self._error is not None:
            self._thread.join(5)
            error = self._error
            if isinstance(error, OSError):
                raise ServerStateError(
                    f"could not open a port: {error}",
                    hint="pick another port, or pass 0 for a free one",
                ) from error
            raise error
        self.ready_s = time.perf_counter() - started
        self._started_at = time.monotonic()
        atexit.register(self.stop)
        return self

    def _run(self) -> None:
        loop = _new_event_loop()
        self._loop = loop
        stack = contextlib.AsyncExitStack()
        try:
            try:
                loop.run_until_complete(self._startup(stack))
            except BaseException as exc:  # reported to start(), which raises it in the caller
                self._error = exc
                loop.run_until_complete(stack.aclose())
                return
            finally:
                self._ready.set()
            loop.run_forever()
            loop.run_until_complete(stack.aclose())
        finally:
            # Cancel whatever the endpoints left behind so closing the loop warns about nothing.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()

    async def _startup(self, stack: contextlib.AsyncExitStack) -> None:
        self.core = core = InferenceCore(self.registry, repository=self.repository)
        core.start()
        stack.callback(core.close)  # runs last: endpoints close (and finish requests) first
        if self._requested["http"] is not None:
            from .http import start_http

            endpoint = await start_http(core, self.host, self._requested["http"],
                                        max_body_bytes=self.max_body_bytes, token=self.token)
            stack.push_async_callback(endpoint.close)
            self.http_port = endpoint.port
        if self._requested["grpc"] is not None:
            from .grpc import start_grpc

            endpoint = await start_grpc(core, self.host, self._requested["grpc"],
                                        max_message_bytes=self.max_body_bytes, token=self.token)
            stack.push_async_callback(endpoint.close)
            self.grpc_port = endpoint.port
        if self._requested["metrics"] is not None:
            from .metrics import start_metrics

            endpoint = await start_metrics(core, self.host, self._requested["metrics"])
            stack.push_async_callback(endpoint.close)
            self.metrics_port = endpoint.port

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish in-flight requests (bounded by ``timeout_s``), release everything.

        Idempotent: stopping a stopped server does nothing.
        """
        atexit.unregister(self.stop)
        thread, loop = self._thread, self._loop
        if thread is None or not thread.is_alive() or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may have closed on its own
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        if thread.is_alive():
            warnings.warn(f"nbserve server thread did not stop within {timeout_s} s", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_stopped(self, timeout_s: float | None = None) -> bool:
        return self._stopped.wait(timeout_s)

    # --------------------------------------------------------------------- in-process API
    def _require_running(self) -> InferenceCore:
        # Called on every in-process request: flags only (is_running asks the thread, which costs more).
        core = self.core
        if core is None or not core.live() or self._stopped.is_set() or self._error is not None:
            raise ServerStateError("the server is not running", hint="start one with nbserve.serve()")
        return self.core

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
        timeout_us: int = 0,
        trace: bool = False,
        sequence_id: int | str = 0,
        sequence_start: bool = False,
        sequence_end: bool = False,
    ) -> dict[str, Any]:
        """Run one request through the model's batcher; no network, no serialization.

        Args:
            model: the model name. inputs: dict of arrays by input name (batch first when the
            model batches). version: a served version (default latest). outputs: a subset to return.
            priority: 1 is highest when the model has priority levels. timeout_s: how long to wait
            here. timeout_us: the queue timeout, where the model's queue policy allows overriding it.
            trace: also return what every step of an ensemble read, wrote, waited and computed.
            sequence_id, sequence_start, sequence_end: the sequence of a stateful model this request
            belongs to (see nbserve.register_stateful).

        Returns:
            dict of output arrays by name; with ``trace``, a :class:`~nbserve.serving.core.Traced`
            dict whose ``trace`` lists the steps and ``tensors`` holds every intermediate tensor.

        Raises:
            ModelNotFound, InvalidInput, ServerBusy, InferenceError (see nbserve.errors).

        >>> import numpy as np, nbserve
        >>> reg = nbserve.Registry()
        >>> _ = reg.register(lambda x: x * 2, name="double", example=np.ones((1, 2), "float32"))
        >>> with nbserve.serve(reg, http=False, grpc=False, metrics=False) as server:
        ...     server.infer("double", {"x": np.ones((1, 2), "float32")})["output_0"].tolist()
        [[2.0, 2.0]]
        """
        core = self._require_running()
        return core.infer_sync(model, inputs, version=version, outputs=outputs, priority=priority,
                               timeout_us=timeout_us, timeout_s=timeout_s, trace=trace, sequence_id=sequence_id,
                               sequence_start=sequence_start, sequence_end=sequence_end).outputs

    async def ainfer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        trace: bool = False,
        sequence_id: int | str = 0,
        sequence_start: bool = False,
        sequence_end: bool = False,
    ) -> dict[str, Any]:
        """``await``-able twin of :meth:`infer`; runs on the caller's event loop."""
        core = self._require_running()
        if trace:
            result = await core.infer(model, inputs, version=version, outputs=outputs, priority=priority,
                                      timeout_us=timeout_us, trace=True)
            return result.outputs
        # The common request: no InferResult and one coroutine frame fewer than core.infer, queued
        # with the others this loop sends in its current iteration (serving/bundler.py).
        if version is None and not (outputs or priority or timeout_us or sequence_id):
            return await core.submit_soon(model, inputs)  # queued with this loop iteration's others
        waiter = asyncio.get_running_loop().create_future()
        core.submit(model, inputs, waiter, version=version, outputs=outputs, priority=priority,
                    timeout_us=timeout_us, sequence_id=sequence_id, sequence_start=sequence_start,
                    sequence_end=sequence_end)
        return await waiter

    # --------------------------------------------------------------------- display
    def status(self) -> dict[str, Any]:
        running = self.is_running
        models = []
        if running and self.core is not None:
            for loaded in self.core.loaded_versions():
                stats = loaded.stats
                models.append({
                    "model": loaded.name,
                    "version": loaded.version,
                    "requests": stats.counts["success"],
                    "failures": stats.counts["fail"],
                    "queue": loaded.batcher.queue_depth,
                    "instances": loaded.batcher.instances,
                })
        return {
            "mode": self.mode,
            "running": running,
            "http": self.http_address if self.http_port else None,
            "grpc": self.grpc_address if self.grpc_port else None,
            "metrics": self.metrics_url if self.metrics_port else None,
            "uptime_s": round(time.monotonic() - self._started_at, 1) if running and self._started_at else 0.0,
            "models": models,
        }

    def __repr__(self) -> str:
        s = self.status()
        state = "running" if s["running"] else "stopped"
        where = ", ".join(f"{k}={s[k]}" for k in ("http", "grpc", "metrics") if s[k])
        return f"<nbserve.Server {state} ({self.mode}) {where} models={[m['model'] for m in s['models']]}>"

    def _repr_html_(self) -> str:
        s = self.status()
        rows = "".join(
            f"<tr><td>{html.escape(m['model'])}</td><td>{m['version']}</td><td>{m['requests']}</td>"
            f"<td>{m['failures']}</td><td>{m['queue']}</td><td>{m['instances']}</td></tr>"
            for m in s["models"]
        )
        state = "running" if s["running"] else "stopped"
        links = " · ".join(f"{k}: <code>{html.escape(str(s[k]))}</code>" for k in ("http", "grpc", "metrics") if s[k])
        return (
            f"<div><b>nbserve server</b> ({self.mode}, {state}) {links}"
            "<table><thead><tr><th>model</th><th>version</th><th>requests</th><th>failures</th>"
            f"<th>queued</th><th>instances</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )


_current: Any = None
_current_lock = threading.Lock()


def current_server() -> Any:
    """The server started by the last :func:`serve` call, or None."""
    return _current


def serve(
    registry: Registry | None = None,
    *,
    mode: str = "thread",
    host: str = "127.0.0.1",
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int = 0,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    http: bool = True,
    grpc: bool = True,
    metrics: bool = True,
    timeout_s: float = 30.0,
) -> Any:
    """Serve the registered models; replaces the server a previous call started.

    Args:
        registry: the models to serve (default: everything ``nbserve.register`` registered).
        mode: ``"thread"`` (in this kernel; default) or ``"subprocess"`` (a child process serving a
            snapshot of the registry written as a Triton repository).
        host: the interface to bind; 127.0.0.1 unless you mean to expose the server.
        http_port, grpc_port, metrics_port: 0 picks a free port.
        token: require ``Authorization: Bearer <token>`` on every request but health checks.
        max_body_bytes: the largest request accepted (HTTP body / gRPC message).
        http, grpc, metrics: turn an endpoint off.

    Returns:
        A running :class:`Server` (or :class:`~nbserve.serving.child.SubprocessServer`).

    Raises:
        ServerStateError: a port could not be opened, or the server did not start.
    """
    global _current
    if host not in LOCAL_HOSTS and token is None:
        warnings.warn(
            f"nbserve is listening on {host} without a token: anyone who can reach this machine can "
            "call your models. Pass token='...' to require a bearer token.",
            UserWarning,
            stacklevel=2,
        )
    with _current_lock:
        if _current is not None:
            _current.stop()
            _current = None
        options = dict(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                       token=token, max_body_bytes=max_body_bytes)
        if mode == "thread":
            server: Any = Server(registry, http=http, grpc=grpc, metrics=metrics, **options)
        elif mode == "subprocess":
            from .child import SubprocessServer

            server = SubprocessServer(registry, **options)
        else:
            raise ServerStateError(f"unknown mode {mode!r}", expected='"thread" or "subprocess"')
        server.start(timeout_s=timeout_s)
        _current = server
        return server
