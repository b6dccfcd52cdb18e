"""Triton's dynamic batcher, for one loaded model version.

Like Triton's C++ scheduler, each model instance owns a thread that forms a batch and runs it:

* requests wait in one FIFO queue per priority level (level 1 first); a request that timed out in
  the queue is rejected (``REJECT``) or moved behind the others of its level (``DELAY``);
* a batch takes requests from the head while their non-batch shapes match the first one and the rows
  fit ``max_batch_size``; it runs at once when it reaches the largest preferred batch size (or
  ``max_batch_size``), when it cannot grow, or when ``max_queue_delay_microseconds`` has passed since its
  oldest request arrived; then it is cut at the largest preferred size it can make;
* ``max_batch_size: 0`` runs one request per call, and so does a model without ``dynamic_batching``
  (Triton's default scheduler); ``instance_group`` count N runs N batches at once.

The window is event-driven: an instance thread sleeps on a condition variable with a timeout equal
to what is left of the window (microsecond precision, unlike an event loop's millisecond timers) and
is woken by every arrival. The batcher never touches an event loop: waiters are resolved through
their own loop (``call_soon_threadsafe``) or directly (``concurrent.futures.Future``), so it can be
fed from any thread or loop.

Invariant: every submitted request is resolved exactly once: with its outputs, the model's error, a
queue timeout or a rejection at shutdown. Requests cancelled while queued are dropped before the
model runs (their waiter is already done).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import operator
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..config import ModelConfig
from ..errors import ModelNotReady, ServerBusy

__all__ = ["Pending", "DynamicBatcher", "Closed", "resolve_all"]

_REJECT, _DELAY = 0, 1  # model_config_pb2.ModelQueuePolicy.TimeoutAction values
_monotonic_ns = time.monotonic_ns  # read on every request

# Triton's queues are unbounded unless max_queue_size is set; in a notebook kernel an unbounded queue
# means a runaway load generator eats the kernel's memory, so nbserve bounds them by default.
DEFAULT_MAX_QUEUE_SIZE = 16384


class Closed(Exception):
    """The batcher stopped accepting requests (its version is being retired); route again."""


@dataclasses.dataclass(eq=False, slots=True)
class Pending:
    """One queued request."""

    inputs: dict[str, Any]
    rows: int
    shape_key: tuple[Any, ...]
    outputs: Sequence[str] | None
    waiter: Any  # asyncio.Future (resolved on its loop) or concurrent.futures.Future
    priority: int = 1  # 1 is the highest level
    enqueue_ns: int = 0
    deadline_ns: int = 0  # 0: no queue timeout
    timeout_action: int = _REJECT
    ticket: int = 0
    delayed: bool = False
    # Set for an entry that carries several requests (serving/bundler.py): when each was sent.
    members: list[int] | None = None

    def cancelled(self) -> bool:
        # Read from instance threads without the waiter's loop: a stale False only means the
        # request runs and its result is dropped by the waiter, which is harmless.
        return self.waiter.done()


_pending_of = operator.itemgetter(0)
_waiter_of = operator.attrgetter("waiter")
_loop_of = operator.methodcaller("get_loop")


def _deliver_on_loop(items: list[tuple[Pending, Any, BaseException | None]]) -> None:
    for pending, result, error in items:
        future = pending.waiter
        if future.done():  # cancelled by the caller meanwhile
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def resolve_all(items: list[tuple[Pending, Any, BaseException | None]]) -> None:
    """Resolve waiters: one ``call_soon_threadsafe`` per event loop, others directly.

    A waiter is an ``asyncio.Future`` (resolved on its own loop), a ``concurrent.futures.Future`` or
    any object with ``done()``, ``set_result()`` and ``set_exception()``, which is resolved here, in
    the calling (instance) thread: such a waiter must be quick and must not raise. A waiter type
    that defines ``resolve_batch`` (a static method taking ``[(waiter, result, error), ...]``) gets
    all of the batch's waiters of that type in one call instead, e.g. to answer them elsewhere.
    """
    waiters = list(map(_waiter_of, map(_pending_of, items)))
    if set(map(type, waiters)) == {asyncio.Future}:
        loops = set(map(_loop_of, waiters))
        if len(loops) == 1:  # the usual batch: every waiter a future of one loop, checked in C
            try:
                loops.pop().call_soon_threadsafe(_deliver_on_loop, items)
            except RuntimeError:
                pass  # the caller's loop is closed: nobody is waiting any more
            return
    by_loop: dict[Any, list[tuple[Pending, Any, BaseException | None]]] = {}
    by_resolver: dict[Any, list[tuple[Any, Any, BaseException | None]]] = {}
    last_loop, last_list = None, None
    for item in items:
        waiter = item[0].waiter
        if isinstance(waiter, asyncio.Future):
            # Usually every waiter of a batch is on one loop: skip the dict lookup for runs of it.
            loop = waiter.get_loop()
            if loop is not last_loop:
                last_loop, last_list = loop, by_loop.setdefault(loop, [])
            last_list.append(item)
        elif (resolve_batch := getattr(type(waiter), "resolve_batch", None)) is not None:
            by_resolver.setdefault(resolve_batch, []).append((waiter, item[1], item[2]))
        elif not waiter.done():
            if item[2] is not None:
                waiter.set_exception(item[2])
            else:
                waiter.set_result(item[1])
    for loop, loop_items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver_on_loop, loop_items)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody is waiting any more
    for resolve_batch, answers in by_resolver.items():
        resolve_batch(answers)


class _Signal:
    """A condition variable on the batcher's lock, for its instance threads.

    ``threading.Condition``'s protocol (``wait``/``notify``/``notify_all`` with the lock held), minus
    its ownership checks: ``submit`` may notify on every arrival while the instance threads are busy,
    so ``notify`` must cost nothing when nobody waits.
    """

    __slots__ = ("_lock", "_waiters")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._waiters: collections.deque[Any] = collections.deque()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, sleep until notified or ``timeout`` seconds pass, take the lock back."""
        waiter = threading.Lock()
        waiter.acquire()
        self._waiters.append(waiter)
        self._lock.release()
        woken = False
        try:
            if timeout is None:
                woken = waiter.acquire()
            elif timeout > 0:
                woken = waiter.acquire(True, timeout)
            else:
                woken = waiter.acquire(False)
        finally:
            self._lock.acquire()
            if not woken:
                try:
                    self._waiters.remove(waiter)
                except ValueError:  # notified just as the timeout ran out: awake either way
                    pass
        return woken

    def notify(self) -> None:
        if self._waiters:
            self._waiters.popleft().release()

    def notify_all(self) -> None:
        while self._waiters:
            self._waiters.popleft().release()


class _Policy:
    __slots__ = ("timeout_action", "default_timeout_ns", "allow_override", "max_queue_size")

    def __init__(self, policy: Any) -> None:
        self.timeout_action = policy.timeout_action
        self.default_timeout_ns = policy.default_timeout_microseconds * 1000
        self.allow_override = policy.allow_timeout_override
        self.max_queue_size = policy.max_queue_size or DEFAULT_MAX_QUEUE_SIZE


class _Reorderer:
    """Delivers results in arrival order when ``preserve_ordering`` is set with several instances."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 1
        self._held: dict[int, tuple[Pending, Any, BaseException | None]] = {}

    def deliver(self, items: list[tuple[Pending, Any, BaseException | None]]) -> None:
        ready = []
        with self._lock:
            for item in items:
                self._held[item[0].ticket] = item
            while self._next in self._held:
                ready.append(self._held.pop(self._next))
                self._next += 1
        if ready:
            resolve_all(ready)


class DynamicBatcher:
    """Queues, batch formation and instance threads for one model version.

    Args:
        config: the version's ModelConfig (max_batch_size, dynamic_batching, instance_group).
        execute: called in an instance thread with a non-empty batch; returns one
            ``(pending, result, error)`` per request. It must not raise.
        label: "model vN", for thread names and messages.
    """

    def __init__(
        self,
        config: ModelConfig,
        execute: Callable[[list[Pending]], list[tuple[Pending, Any, BaseException | None]]],
        *,
        label: str,
    ) -> None:
        self.model = config.name
        self.label = label
        self.max_batch_size = max(config.max_batch_size, 0)
        db = config.dynamic_batching
        self.dynamic = config.HasField("dynamic_batching") and self.max_batch_size > 0
        self.delay_ns = db.max_queue_delay_microseconds * 1000 if self.dynamic else 0
        self.preferred = sorted({p for p in db.preferred_batch_size if p <= self.max_batch_size}) if self.dynamic else []
        self.target_rows = self.preferred[-1] if self.preferred else self.max_batch_size
        self.levels = db.priority_levels if self.dynamic and db.priority_levels > 0 else 1
        self.default_level = db.default_priority_level if self.dynamic and db.priority_levels > 0 else 1
        default_policy = _Policy(db.default_queue_policy)
        self.policies = [
            _Policy(db.priority_queue_policy[level]) if level in db.priority_queue_policy else default_policy
            for level in range(1, self.levels + 1)
        ]
        self.instances = sum(max(g.count, 1) for g in config.instance_group) or 1
        self._execute = execute
        self._reorder = _Reorderer() if db.preserve_ordering and self.instances > 1 else None
        # submit() takes the bare lock (a C-level context manager); instance threads wait on a signal
        # built on it.
        self._lock = threading.Lock()
        self._cond = _Signal(self._lock)
        self._queues: list[collections.deque[Pending]] = [collections.deque() for _ in range(self.levels)]
        self._delayed: list[collections.deque[Pending]] = [collections.deque() for _ in range(self.levels)]
        self._queued = 0
        self._queued_rows = 0
        self._window_waiters = 0  # instance threads sleeping on an open batch window
        # Cancelled requests leave the queue without running; they still pass through _finish so
        # that preserve_ordering's reorder buffer never waits for their ticket.
        self._dropped: list[tuple[Pending, Any, BaseException | None]] = []
        self._has_deadlines = any(p.default_timeout_ns or p.allow_override for p in self.policies)
        self._ticket = 0
        self._closed = False
        self._busy = 0
        self._threads = [
            threading.Thread(target=self._instance_loop, name=f"nbserve-{label}-instance{i}", daemon=True)
            for i in range(self.instances)
        ]
        for thread in self._threads:
            thread.start()

    # --------------------------------------------------------------------- submitting
    def level_for(self, priority: int) -> int:
        return self.default_level if not priority else priority

    def submit(self, pending: Pending, timeout_us: int = 0) -> None:
        """Queue a request; raises ServerBusy when its queue is full, Closed when retiring."""
        level = pending.priority
        policy = self.policies[level - 1]
        now = _monotonic_ns()
        # An entry carrying several requests entered the queue, for the batch window, with its first.
        pending.enqueue_ns = pending.members[0] if pending.members else now
        if policy.default_timeout_ns or timeout_us:
            timeout_ns = timeout_us * 1000 if (timeout_us and policy.allow_override) else policy.default_timeout_ns
            pending.deadline_ns = now + timeout_ns if timeout_ns else 0
            pending.timeout_action = policy.timeout_action
        else:
            pending.deadline_ns = 0
        with self._lock:
            if self._closed:
                raise Closed()
            queue = self._queues[level - 1]
            if len(queue) + len(self._delayed[level - 1]) >= policy.max_queue_size:
                raise ServerBusy(
                    "the queue is full",
                    model=self.model,
                    expected=f"at most {policy.max_queue_size} queued requests at priority {level}",
                    got=len(queue),
                    hint="retry later, lower the request rate, or raise max_queue_size / instances",
                )
            if self._reorder is not None:  # tickets order the answers of several instances
                self._ticket += 1
                pending.ticket = self._ticket
            if pending.deadline_ns:
                self._has_deadlines = True
            queue.append(pending)
            self._queued += 1
            self._queued_rows += pending.rows
            # Wake an instance only when this arrival can change its decision: a thread idle on an
            # empty queue, or a window that may now be full. Waking a window sleeper on every
            # arrival would make it rescan the queue and fight the caller for the GIL each time;
            # it wakes by itself when the window ends.
            if self._window_waiters == 0 or self._queued_rows >= self.target_rows:
                self._cond.notify()

    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def busy_instances(self) -> int:
        return self._busy

    # --------------------------------------------------------------------- instances
    def _instance_loop(self) -> None:
        while True:
            batch, expired = self._next_batch()
            if expired:
                self._finish(expired)
            if batch is None:
                if expired:
                    continue
                return
            self._busy += 1
            try:
                results = self._execute(batch)
            finally:
                self._busy -= 1
            self._finish(results)

    def _finish(self, results: list[tuple[Pending, Any, BaseException | None]]) -> None:
        if self._reorder is not None:
            self._reorder.deliver(results)
        else:
            resolve_all(results)

    def _next_batch(self) -> tuple[list[Pending] | None, list[tuple[Pending, Any, BaseException | None]]]:
        """Block until a batch is due; return it (None at shutdown) and any requests that timed out."""
        with self._lock:
            expired, self._dropped = self._dropped, []
            while True:
                now = time.monotonic_ns()
                if self._has_deadlines:
                    self._expire(now, expired)
                    if expired:
                        return None, expired  # resolve them outside the lock, then come back
                candidate, rows, can_grow = self._candidate()
                if not candidate:
                    if self._closed:
                        return None, expired
                    self._cond.wait(self._seconds_to_next_deadline(now))
                    continue
                if (
                    self.max_batch_size == 0
                    or not can_grow
                    or rows >= self.target_rows
                    or self.delay_ns == 0
                    or self._closed
                ):
                    return self._take(candidate), expired
                window_end = candidate[0].enqueue_ns + self.delay_ns
                if now >= window_end:
                    return self._take(self._cut_preferred(candidate)), expired
                wait_ns = window_end - now
                deadline = self._seconds_to_next_deadline(now)
                self._window_waiters += 1
                try:
                    self._cond.wait(min(wait_ns / 1e9, deadline) if deadline is not None else wait_ns / 1e9)
                finally:
                    self._window_waiters -= 1

    def _candidate(self) -> tuple[list[Pending], int, bool]:
        """The batch the head of the queues would make now, its rows, and whether it could grow."""
        batch: list[Pending] = []
        rows = 0
        key = None
        # Without dynamic_batching, Triton's default scheduler runs every request as it came.
        unbatched = self.max_batch_size == 0 or not self.dynamic
        max_rows = self.max_batch_size
        for level in range(self.levels):
            for queue in (self._queues[level], self._delayed[level]):
                while queue and queue[0].waiter.done():  # cancelled: drop it before it runs
                    dropped = queue.popleft()
                    self._dropped.append((dropped, None, None))
                    self._queued -= 1
                    self._queued_rows -= dropped.rows
                for pending in queue:
                    if pending.waiter.done():
                        continue
                    if unbatched:
                        return [pending], pending.rows, False
                    if key is None:
                        key = pending.shape_key
                    elif (pending.shape_key is not key and pending.shape_key != key) or rows + pending.rows > max_rows:
                        return batch, rows, False  # never merge shapes; never exceed the max
                    batch.append(pending)
                    rows += pending.rows
        return batch, rows, rows < max_rows

    def _cut_preferred(self, candidate: list[Pending]) -> list[Pending]:
        """At the window's end: the longest prefix whose rows equal a preferred size, else all."""
        if not self.preferred:
            return candidate
        rows, cut = 0, 0
        preferred = set(self.preferred)
        for i, pending in enumerate(candidate, 1):
            rows += pending.rows
            if rows in preferred:
                cut = i
        return candidate[:cut] if cut else candidate

    def _take(self, batch: list[Pending]) -> list[Pending]:
        # The usual batch is the head of the first queue: pop it without rebuilding the queue.
        first = self._queues[0]
        count = len(batch)
        if len(first) >= count and first[0] is batch[0] and first[count - 1] is batch[-1]:
            for _ in range(count):
                first.popleft()
            self._queued -= count
            self._queued_rows -= sum(p.rows for p in batch)
            return batch
        chosen = set(map(id, batch))
        for level in range(self.levels):
            for queue in (self._queues[level], self._delayed[level]):
                if queue and any(id(p) in chosen for p in queue):
                    kept = []
                    for p in queue:
                        if id(p) in chosen:
                            continue
                        if p.cancelled():
                            self._dropped.append((p, None, None))
                        else:
                            kept.append(p)
                    self._queued -= len(queue) - len(kept)
                    self._queued_rows -= sum(p.rows for p in queue) - sum(p.rows for p in kept)
                    queue.clear()
                    queue.extend(kept)
        return batch

    def _expire(self, now: int, expired: list[tuple[Pending, Any, BaseException | None]]) -> None:
        for level in range(self.levels):
            queue = self._queues[level]
            if not any(p.deadline_ns and p.deadline_ns <= now for p in queue):
                continue
            kept: collections.deque[Pending] = collections.deque()
            for pending in queue:
                if pending.deadline_ns and pending.deadline_ns <= now:
                    if pending.timeout_action == _DELAY:
                        pending.delayed = True
                        pending.deadline_ns = 0
                        self._delayed[level].append(pending)
                        continue
                    self._queued -= 1
                    self._queued_rows -= pending.rows
                    waited_us = (now - pending.enqueue_ns) // 1000
                    expired.append((pending, None, ServerBusy(
                        "the request timed out in the queue",
                        model=self.model,
                        expected=f"a batch slot within {(pending.deadline_ns - pending.enqueue_ns) // 1000} us",
                        got=f"{waited_us} us waiting",
                        hint="retry later, raise the queue timeout, or add instances",
                    )))
                else:
                    kept.append(pending)
            self._queues[level] = kept

    def _seconds_to_next_deadline(self, now: int) -> float | None:
        if not self._has_deadlines:
            return None
        deadlines = [p.deadline_ns for q in self._queues for p in q if p.deadline_ns]
        return max(min(deadlines) - now, 0) / 1e9 if deadlines else None

    # --------------------------------------------------------------------- shutdown
    def close(self, *, drain: bool = True, timeout_s: float = 10.0) -> None:
        """Stop accepting; run what is queued (``drain``) or reject it; join the instance threads."""
        rejected: list[tuple[Pending, Any, BaseException | None]] = []
        with self._lock:
            self._closed = True
            if not drain:
                for queue in (*self._queues, *self._delayed):
                    while queue:
                        pending = queue.popleft()
                        rejected.append((pending, None, ModelNotReady(
                            "the model was unloaded before this request ran", model=self.model,
                            hint="send the request again",
                        )))
                self._queued = 0
                self._queued_rows = 0
            self._cond.notify_all()
        if rejected:
            self._finish(rejected)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0))

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)
