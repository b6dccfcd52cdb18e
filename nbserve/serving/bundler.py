"""Requests a coroutine sends during one event-loop iteration, queued together.

Sixty-four tasks awaiting ``server.ainfer`` on one loop all submit in the same loop iteration. Queued
one by one, the model's instance thread (on the other core, in a Triton-style batcher) would then
touch every request's objects (its queue entry, future, input and output arrays) and the caller's
loop would touch them again: on a 2-core machine that cross-core traffic cost about a third of the
in-process API's throughput (measured: the same process pinned to one core ran 1.3-1.5x faster).

So :class:`LoopBundler` collects, per event loop and model version, the common requests (latest
version, every output, default priority, no queue timeout) submitted until the loop's current
iteration ends, joins their inputs on the caller's loop and queues them as ONE batcher entry that
carries the enqueue times of its requests. The instance thread sees one entry, runs the model and
hands the whole output back with one ``call_soon_threadsafe``; the caller's loop splits it.

What stays as in Triton: a bundle never exceeds the batcher's target batch size (the largest
preferred size, else ``max_batch_size``), never mixes shapes, and counts as its requests in every
statistic (success, queue and compute times, counts per batch size, recent latencies). What differs:
``max_queue_size`` counts a bundle once, and a request cancelled after its bundle was queued is not
dropped before the model runs (its rows are computed and discarded).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import NbserveError
from ..tensors import merge, split, split_rows
from .batcher import Closed, Pending

__all__ = ["LoopBundler"]

_monotonic_ns = time.monotonic_ns


def _fail_all(futures: list[asyncio.Future], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


class _Bundle:
    """The requests of one loop iteration for one model version."""

    __slots__ = ("model", "loaded", "key", "rows", "inputs", "row_counts", "futures", "enqueued")

    def __init__(self, model: str, loaded: Any, key: tuple[Any, ...]) -> None:
        self.model = model
        self.loaded = loaded
        self.key = key
        self.rows = 0
        self.inputs: list[dict[str, Any]] = []
        self.row_counts: list[int] = []
        self.futures: list[asyncio.Future] = []
        self.enqueued: list[int] = []


class _BundleWaiter:
    """A bundle's waiter: resolved in the instance thread, answered on the caller's loop."""

    __slots__ = ("loop", "futures", "row_counts")

    def __init__(self, loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future], row_counts: list[int]) -> None:
        self.loop = loop
        self.futures = futures
        self.row_counts = row_counts

    def done(self) -> bool:
        return False  # a bundle always runs; answers to cancelled requests are dropped on delivery

    def set_result(self, outputs: dict[str, Any]) -> None:
        self._post(outputs, None)

    def set_exception(self, error: BaseException) -> None:
        self._post(None, error)

    def _post(self, outputs: dict[str, Any] | None, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, outputs, error)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody is waiting any more

    def _deliver(self, outputs: dict[str, Any] | None, error: BaseException | None) -> None:
        futures = self.futures
        if error is not None:
            _fail_all(futures, error)
            return
        assert outputs is not None
        if not self.row_counts:  # one row each
            answers: Any = split_rows(outputs, len(futures))
        else:
            parts = {name: split(array, self.row_counts) for name, array in outputs.items()}
            answers = (dict(zip(parts, slices)) for slices in zip(*parts.values()))
        for future, answer in zip(futures, answers):
            if not future.done():
                future.set_result(answer)


class LoopBundler:
    """Bundles one event loop's requests until its current iteration ends (see module docstring).

    Args:
        loop: the running loop. core: the InferenceCore; a bundle whose version retired before it
            was queued goes to ``core.submit`` request by request, to be routed again.
        done: called with the loop at the flush, to forget this bundler (one exists per loop while
            requests wait for the iteration's end).
    """

    __slots__ = ("loop", "_core", "_done", "_open")

    def __init__(self, loop: asyncio.AbstractEventLoop, core: Any, done: Any) -> None:
        self.loop = loop
        self._core = core
        self._done = done
        self._open: dict[Any, _Bundle] = {}
        loop.call_soon(self.flush)

    def add(self, model: str, loaded: Any, inputs: dict[str, Any], rows: int, key: tuple[Any, ...]) -> asyncio.Future:
        """Queue a checked request with this iteration's others; returns the future of its outputs."""
        future = self.loop.create_future()
        bundle = self._open.get(loaded)
        if (
            bundle is None
            or (bundle.key is not key and bundle.key != key)  # never mix shapes
            or bundle.rows + rows > loaded.batcher.target_rows  # never grow past a full batch
        ):
            if bundle is not None:
                self._send(bundle)
            bundle = self._open[loaded] = _Bundle(model, loaded, key)
        bundle.inputs.append(inputs)
        bundle.row_counts.append(rows)
        bundle.futures.append(future)
        bundle.enqueued.append(_monotonic_ns())
        bundle.rows += rows
        return future

    def flush(self) -> None:
        self._done(self.loop)
        for bundle in self._open.values():
            self._send(bundle)
        self._open.clear()

    def _send(self, bundle: _Bundle) -> None:
        try:
            self._queue(bundle)
        except Exception as error:  # a full queue, or anything else: every request hears it, once
            _fail_all(bundle.futures, error)

    def _queue(self, bundle: _Bundle) -> None:
        loaded = bundle.loaded
        level = loaded.batcher.default_level
        if len(bundle.futures) == 1:  # alone: an ordinary request
            pending = Pending(bundle.inputs[0], bundle.rows, bundle.key, None, bundle.futures[0], level)
        else:
            first = bundle.inputs[0]
            merged = {name: merge([inputs[name] for inputs in bundle.inputs]) for name in first}
            one_row_each = bundle.rows == len(bundle.futures)
            waiter = _BundleWaiter(self.loop, bundle.futures, [] if one_row_each else bundle.row_counts)
            pending = Pending(merged, bundle.rows, bundle.key, None, waiter, level)
        pending.members = bundle.enqueued  # statistics count each request, from when it was sent
        try:
            loaded.batcher.submit(pending)
        except Closed:  # retired meanwhile: each request is routed again on its own
            for inputs, future in zip(bundle.inputs, bundle.futures):
                try:
                    self._core.submit(bundle.model, inputs, future)
                except NbserveError as error:
                    future.set_exception(error)
