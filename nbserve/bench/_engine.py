"""The load loop: closed loop at a concurrency, open loop at a request rate, on one asyncio event loop.

:class:`Engine` runs on an event loop it does not own and records, per request, when it was sent and
when its answer came (``time.monotonic_ns``, the same clock in every process on the machine, so the
orchestrator can cut windows from a child process's timestamps). :class:`EngineHost` gives an engine
its own thread and loop (uvloop where installed) and a blocking API for the orchestrating thread;
the generator process (:mod:`._worker`) is an EngineHost behind a pipe.

Closed loop: ``concurrency`` workers, each sends its next request as soon as the previous answer
came. Open loop: requests start on a schedule (constant interval, or exponential intervals for a
Poisson process) whether or not earlier ones have answered; when ``max_outstanding`` are in flight,
a scheduled request is counted as ``dropped`` instead of queueing in the client, so the achieved rate
is visible rather than hidden.

Invariants the tests rely on: every request handed to a transport is counted once in ``sent`` and
ends once, in ``ok`` or in ``failed``; ``halt`` returns only after every such request ended (or was
cancelled at the halt's deadline, counted in ``failed``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._transports import RequestFailed

__all__ = ["Load", "Records", "Engine", "EngineHost", "arrival_gaps_ns", "new_event_loop"]

_MAX_MESSAGES = 20  # distinct error messages kept per take()


@dataclasses.dataclass(frozen=True)
class Load:
    """What to generate: ``mode`` "concurrency" (closed loop) or "rate" (open loop, requests/s)."""

    mode: str
    value: float
    distribution: str = "constant"  # open loop: "constant" or "poisson"
    seed: int = 0
    max_outstanding: int = 1024

    def __post_init__(self) -> None:
        if self.mode not in ("concurrency", "rate"):
            raise ValueError(f"mode must be 'concurrency' or 'rate', got {self.mode!r}")
        if self.distribution not in ("constant", "poisson"):
            raise ValueError(f"distribution must be 'constant' or 'poisson', got {self.distribution!r}")
        if self.value <= 0:
            raise ValueError(f"{self.mode} must be > 0, got {self.value}")

    def split(self, parts: int) -> list[Load]:
        """This load shared by ``parts`` generators (concurrency spread as evenly as it goes)."""
        if self.mode == "concurrency":
            base, extra = divmod(int(self.value), parts)
            values = [base + (1 if i < extra else 0) for i in range(parts)]
            return [dataclasses.replace(self, value=v, seed=self.seed + i) for i, v in enumerate(values) if v > 0]
        return [dataclasses.replace(self, value=self.value / parts, seed=self.seed + i,
                                    max_outstanding=max(1, self.max_outstanding // parts)) for i in range(parts)]


@dataclasses.dataclass
class Records:
    """Requests that ended since the last take: ``ok``/``failed`` are int64 arrays of (sent, ended) ns."""

    ok: np.ndarray
    failed: np.ndarray
    sent: int = 0
    dropped: int = 0
    messages: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls) -> Records:
        return cls(np.empty((0, 2), np.int64), np.empty((0, 2), np.int64))

    @classmethod
    def merge(cls, parts: list[Records]) -> Records:
        if not parts:
            return cls.empty()
        messages: dict[str, int] = collections.Counter()
        for part in parts:
            messages.update(part.messages)
        return cls(np.concatenate([p.ok for p in parts]), np.concatenate([p.failed for p in parts]),
                   sum(p.sent for p in parts), sum(p.dropped for p in parts), dict(messages))


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Engine:
    """Generates one load at a time through a transport; lives on one event loop."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._ok = array("q")
        self._failed = array("q")
        self._messages: collections.Counter[str] = collections.Counter()
        self._sent = 0
        self._dropped = 0
        self._index = 0
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    # --------------------------------------------------------------------- control (on the loop)
    async def start(self, load: Load) -> None:
        if self._task is not None and not self._task.done():
            raise RuntimeError("a load is already running; halt it first")
        self._stop = asyncio.Event()
        body = self._closed_loop(int(load.value)) if load.mode == "concurrency" else self._open_loop(load)
        self._task = asyncio.get_running_loop().create_task(body)

    async def take(self) -> Records:
        ok, self._ok = self._ok, array("q")
        failed, self._failed = self._failed, array("q")
        messages, self._messages = dict(self._messages), collections.Counter()
        sent, self._sent = self._sent, 0
        dropped, self._dropped = self._dropped, 0
        return Records(np.frombuffer(ok, np.int64).reshape(-1, 2).copy(),
                       np.frombuffer(failed, np.int64).reshape(-1, 2).copy(), sent, dropped, messages)

    async def halt(self, timeout_s: float) -> Records:
        """Stop starting requests, wait (up to ``timeout_s``) for those in flight, return what is left."""
        if self._stop is not None:
            self._stop.set()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:  # a server that never answers: give up on what is in flight
                task.cancel()
                for inflight in list(self._inflight):
                    inflight.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif task.exception() is not None:
                self._record_error(0, f"the load loop failed: {task.exception()!r}")
        self._task = None
        return await self.take()

    async def close(self) -> None:
        await self.halt(5.0)
        await self.transport.close()

    # --------------------------------------------------------------------- one request
    def _record_error(self, started: int, message: str) -> None:
        self._failed.extend((started, time.monotonic_ns()))
        if message in self._messages or len(self._messages) < _MAX_MESSAGES:
            self._messages[message] += 1

    async def _one(self, connection: Any) -> None:
        index = self._index
        self._index += 1
        self._sent += 1
        started = time.monotonic_ns()
        try:
            await connection.send(index)
        except RequestFailed as exc:
            self._record_error(started, str(exc))
        except asyncio.CancelledError:
            self._record_error(started, "cancelled: no answer before the run stopped")
            raise
        except Exception as exc:  # a client-side failure must not end the worker silently
            self._record_error(started, f"{type(exc).__name__}: {exc}")
        else:
            self._ok.extend((started, time.monotonic_ns()))

    async def _connect(self) -> Any:
        try:
            return await self.transport.connect()
        except RequestFailed as exc:
            # Counted as a failed request: the generator tried to send one. A short pause keeps a
            # dead server from turning this loop into a busy spin.
            self._sent += 1
            self._record_error(time.monotonic_ns(), str(exc))
            await asyncio.sleep(0.05)
            return None

    # --------------------------------------------------------------------- closed loop
    async def _closed_loop(self, concurrency: int) -> None:
        stop = self._stop
        assert stop is not None

        async def worker() -> None:
            connection = None
            while not stop.is_set():
                if connection is None or connection.broken:
                    connection = await self._connect()
                    continue
                await self._one(connection)

        workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        self._inflight.update(workers)
        try:
            await asyncio.gather(*workers)
        finally:
            self._inflight.difference_update(workers)

    # --------------------------------------------------------------------- open loop
    async def _open_loop(self, load: Load) -> None:
        stop = self._stop
        assert stop is not None
        loop = asyncio.get_running_loop()
        idle: collections.deque[Any] = collections.deque()
        stopped = loop.create_task(stop.wait())

        async def request() -> None:
            connection = idle.pop() if idle else None
            if connection is None or connection.broken:
                connection = await self._connect()
                if connection is None:
                    return
            await self._one(connection)
            if not connection.broken:
                idle.append(connection)

        gaps = arrival_gaps_ns(load)
        due = float(time.monotonic_ns())
        try:
            while not stop.is_set():
                now = time.monotonic_ns()
                # Start everything that is due: a late wake-up (timer granularity) sends the missed
                # requests at once, so the achieved rate over a window is the requested one.
                while due <= now:
                    if len(self._inflight) >= load.max_outstanding:
                        self._dropped += 1
                    else:
                        task = loop.create_task(request())
                        self._inflight.add(task)
                        task.add_done_callback(self._inflight.discard)
                    due += next(gaps)
                await asyncio.wait({stopped}, timeout=(due - now) / 1e9)
            if self._inflight:
                await asyncio.gather(*list(self._inflight), return_exceptions=True)
        finally:
            stopped.cancel()


def arrival_gaps_ns(load: Load) -> Iterator[float]:
    """The open loop's schedule: gaps between request starts, in ns (endless).

    Constant: ``1e9 / rate`` each. Poisson: exponential gaps of that mean (seeded), drawn in blocks
    so that NumPy is called once per 1,024 requests.
    """
    interval_ns = 1e9 / load.value
    if load.distribution == "constant":
        while True:
            yield interval_ns
    rng = np.random.default_rng(load.seed)
    while True:
        yield from rng.exponential(interval_ns, 1024).tolist()


class EngineHost:
    """An :class:`Engine` on its own daemon thread and event loop, driven from other threads.

    Args:
        make_transport: called on the engine's loop to build the transport (asyncio objects must be
            created in the loop that uses them).
        name: the thread's name.
    """

    def __init__(self, make_transport: Callable[[], Any], *, name: str = "nbserve-bench-load") -> None:
        self._loop = new_event_loop()
        self._ready: concurrent.futures.Future[Engine] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(make_transport,), name=name, daemon=True)
        self._thread.start()
        self.engine = self._ready.result(30)

    def _run(self, make_transport: Callable[[], Any]) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)

        async def build() -> Engine:
            return Engine(make_transport())

        try:
            engine = loop.run_until_complete(build())
        except BaseException as exc:
            self._ready.set_exception(exc)
            loop.close()
            return
        self._ready.set_result(engine)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _call(self, coroutine: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def start(self, load: Load) -> None:
        self._call(self.engine.start(load), 30)

    def take(self) -> Records:
        return self._call(self.engine.take(), 30)

    def halt(self, timeout_s: float = 10.0) -> Records:
        return self._call(self.engine.halt(timeout_s), timeout_s + 30)

    def close(self) -> None:
        """Halt, close the transport, end the thread. Idempotent."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self.engine.close(), 40)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass  # the loop is stuck or gone: stopping it below still ends the thread
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
