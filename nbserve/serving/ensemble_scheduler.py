"""Ensembles in the server: each request runs its steps as a DAG, each step through its model's batcher.

An ensemble is served by an :class:`EnsembleVersion`, which has the face of a
:class:`~nbserve.serving.core.LoadedVersion` (config, input checks, statistics) with an
:class:`EnsembleScheduler` in place of the dynamic batcher: routing, ``_prepare`` and ``_submit`` in
the core treat both alike, so every frontend serves ensembles without knowing about them.

One request is one :class:`_Run`. Submitting it queues every step whose inputs are ensemble inputs
into that step model's own batcher, so steps of concurrent ensemble requests batch together. A step's
waiter is a :class:`TimedFuture` that hands its outcome to the run directly in the instance thread
that ran the batch: the run stores the outputs (the arrays themselves, no copy, on whatever device the
model left them) and queues the steps that became ready. No event loop and no extra thread sit
between two steps, and independent steps run at the same time in their own batchers.

Invariant: the ensemble request's waiter is resolved exactly once: with the outputs when the last step
finishes, or with the first error, naming the step; the steps still queued then are cancelled, so
their batchers drop them before they run.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..ensemble import Plan, PlannedStep, plan, step_arrays, step_error
from ..errors import ModelNotReady
from ..requests import InputChecker
from .batcher import Closed, Pending, resolve_all
from .stats import ModelStats

__all__ = ["EnsembleVersion", "EnsembleScheduler", "TimedFuture", "Traced", "start_traced"]


class Traced(dict):
    """Outputs of a traced request (a dict by output name) with what happened inside.

    Attributes:
        trace: one dict per step, in step order: ``step`` (index), ``model``, ``version``,
            ``inputs`` and ``outputs`` (the arrays it read and wrote, by the model's tensor names),
            ``queue_us`` (waiting in the model's queue), ``compute_us`` (its batch running),
            ``start_us`` and ``end_us`` (from the request's arrival). A plain model gives one entry.
        tensors: every ensemble tensor by name: inputs, intermediates and outputs.
    """

    def __init__(self, outputs: Mapping[str, Any], trace: list[dict[str, Any]], tensors: Mapping[str, Any]) -> None:
        super().__init__(outputs)
        self.trace = trace
        self.tensors = dict(tensors)

    def __repr__(self) -> str:
        steps = ", ".join(f"{s['model']} (queue {s['queue_us']:.0f} us, compute {s['compute_us']:.0f} us)" for s in self.trace)
        return f"Traced({dict.__repr__(self)}, trace=[{steps}])"


class TimedFuture(concurrent.futures.Future):
    """A waiter that learns its request's queue and compute time from the batch that ran it
    (:class:`~nbserve.serving.core.LoadedVersion` sets ``queue_ns`` and ``compute_ns`` before resolving
    it), and can hand its outcome to ``on_done(future, result, error)`` in the resolving thread."""

    def __init__(self, on_done: Callable[[TimedFuture, Any, BaseException | None], None] | None = None) -> None:
        super().__init__()
        self.queue_ns = 0
        self.compute_ns = 0
        self._on_done = on_done

    def set_result(self, result: Any) -> None:
        try:
            super().set_result(result)
        except concurrent.futures.InvalidStateError:
            return  # cancelled between the batcher's done() check and now: nobody wants it
        if self._on_done is not None:
            self._on_done(self, result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        try:
            super().set_exception(exception)
        except concurrent.futures.InvalidStateError:
            return
        if self._on_done is not None:
            self._on_done(self, None, exception)


class EnsembleVersion:
    """One served ensemble version, with the face of a LoadedVersion (see the module docstring)."""

    def __init__(self, entry: Any, core: Any) -> None:
        self.entry = entry
        self.name = entry.name
        self.version = entry.version
        self.config = entry.config
        self.batched = entry.config.max_batch_size > 0
        self.output_names = [t.name for t in entry.config.output]
        self.check_inputs = InputChecker(entry.config, entry.version)
        self.stats = ModelStats()
        # (end ns, [enqueue ns]) of the latest successful requests, as LoadedVersion keeps for dashboards.
        self.recent: collections.deque[tuple[int, list[int]]] = collections.deque(maxlen=4096)
        self.batcher = EnsembleScheduler(self, core)
        self.sequenced = False  # an ensemble of stateful models keeps no sequence of its own

    def close(self, *, drain: bool = True) -> None:
        self.batcher.close(drain=drain)


class EnsembleScheduler:
    """Runs an ensemble's requests through the core; takes the dynamic batcher's place for an ensemble.

    It owns no thread: steps run in their models' instance threads. ``queue_depth`` counts the
    requests in flight. Any priority is accepted and passed to the steps whose models have that many
    priority levels (the others use their default).
    """

    instances = 0
    busy_instances = 0
    threads: list[threading.Thread] = []
    levels = 2**31 - 1  # passed through to the steps, which check their own levels
    default_level = 0  # each step's default level

    def __init__(self, version: EnsembleVersion, core: Any) -> None:
        self.version = version
        self.core = core
        self.plan: Plan = plan(version.config)
        self._cond = threading.Condition(threading.Lock())
        self._runs: set[_Run] = set()
        self._closed = False

    def level_for(self, priority: int) -> int:
        return priority  # 0: each step's default level

    @property
    def queue_depth(self) -> int:
        return len(self._runs)

    def submit(self, pending: Pending, timeout_us: int = 0, trace: dict[str, Any] | None = None) -> None:
        """Start one ensemble request; its ``pending.waiter`` is resolved when the last step is done.

        Args:
            pending: the request (inputs checked against the ensemble's config).
            timeout_us: the queue timeout for every step, where the step's queue policy allows it.
            trace: when given, filled with ``"steps"`` (one record per step) and ``"tensors"`` before
                the waiter is resolved.

        Raises:
            Closed: the ensemble version is being retired (route again).
        """
        pending.enqueue_ns = time.monotonic_ns()
        run = _Run(self, pending, timeout_us, trace)
        with self._cond:
            if self._closed:
                raise Closed()
            self._runs.add(run)
        run.launch(self.plan.first)

    def _finished(self, run: _Run) -> None:
        with self._cond:
            self._runs.discard(run)
            if not self._runs:
                self._cond.notify_all()

    def close(self, *, drain: bool = True, timeout_s: float = 10.0) -> None:
        """Stop accepting; let the requests in flight finish (``drain``, bounded) or fail them."""
        with self._cond:
            self._closed = True
            if drain:
                self._cond.wait_for(lambda: not self._runs, timeout_s)
            runs = list(self._runs)
        for run in runs:
            run.fail(None, ModelNotReady("the ensemble was unloaded before this request finished",
                                         model=self.version.name, hint="send the request again"))


class _Run:
    """The state of one ensemble request (see the module docstring)."""

    __slots__ = ("scheduler", "pending", "timeout_us", "trace", "tensors", "waiting", "remaining", "lock",
                 "futures", "over", "compute_ns", "records")

    def __init__(self, scheduler: EnsembleScheduler, pending: Pending, timeout_us: int, trace: dict[str, Any] | None) -> None:
        self.scheduler = scheduler
        self.pending = pending
        self.timeout_us = timeout_us
        self.trace = trace
        self.tensors: dict[str, Any] = dict(pending.inputs)
        steps = scheduler.plan.steps
        self.waiting = [step.waits_for for step in steps]
        self.remaining = len(steps)
        self.lock = threading.Lock()
        self.futures: dict[int, TimedFuture] = {}
        self.over = False
        self.compute_ns = 0
        self.records: dict[int, dict[str, Any]] | None = {} if trace is not None else None

    def launch(self, indices: Sequence[int]) -> None:
        """Queue these (ready) steps in their models' batchers."""
        core = self.scheduler.core
        steps = self.scheduler.plan.steps
        for index in indices:
            if self.over:
                return
            if self.pending.cancelled():  # the client went away: run nothing more
                self.fail(None, None)
                return
            step = steps[index]
            try:
                inputs = step_arrays(self.scheduler.version.name, step, self.tensors)
                priority = self._priority(step)
                loaded, request = core._prepare(step.model, inputs, step.version, step.output_names, priority)
                future = TimedFuture(lambda f, result, error, i=index: self.step_done(i, f, result, error))
                request.waiter = future
                with self.lock:
                    self.futures[index] = future
                if self.records is not None:
                    self.records[index] = {
                        "step": index, "model": step.model, "version": loaded.version, "inputs": request.inputs,
                        "outputs": None, "queue_us": 0.0, "compute_us": 0.0,
                        "start_us": (time.monotonic_ns() - self.pending.enqueue_ns) / 1000, "end_us": 0.0,
                    }
                served = core._submit(step.model, step.version, loaded, request, self.timeout_us)
                if self.records is not None and served is not loaded:
                    self.records[index]["version"] = served.version
            except Exception as exc:  # a step that cannot be queued fails the request, named
                self.fail(step, exc)
                return

    def _priority(self, step: PlannedStep) -> int:
        priority = self.pending.priority
        if not priority:
            return 0
        levels = self.scheduler.core._route(step.model, step.version).batcher.levels
        return priority if priority <= levels else 0

    def step_done(self, index: int, future: TimedFuture, result: Any, error: BaseException | None) -> None:
        """Called in the instance thread that ran the step: store its outputs, queue what became ready."""
        step = self.scheduler.plan.steps[index]
        if error is not None:
            self.fail(step, error)
            return
        try:
            ready = []
            with self.lock:
                if self.over:
                    return
                del self.futures[index]
                for model_output, tensor in step.outputs:
                    self.tensors[tensor] = result[model_output]
                self.compute_ns += future.compute_ns
                for dependent in step.dependents:
                    self.waiting[dependent] -= 1
                    if self.waiting[dependent] == 0:
                        ready.append(dependent)
                self.remaining -= 1
                finished = self.remaining == 0
                if finished:
                    self.over = True
            if self.records is not None:
                record = self.records[index]
                record["outputs"] = {model_output: result[model_output] for model_output, _ in step.outputs}
                record["queue_us"] = future.queue_ns / 1000
                record["compute_us"] = future.compute_ns / 1000
                record["end_us"] = (time.monotonic_ns() - self.pending.enqueue_ns) / 1000
        except Exception as exc:  # e.g. a re-registered step model no longer has a mapped output
            self.fail(step, exc)
            return
        if finished:
            self.finish()
        elif ready:
            self.launch(ready)

    def finish(self) -> None:
        scheduler, pending = self.scheduler, self.pending
        version = scheduler.version
        try:
            outputs = {name: self.tensors[name] for name in (pending.outputs or scheduler.plan.outputs)}
            if self.trace is not None and self.records is not None:
                self.trace["steps"] = [self.records[i] for i in sorted(self.records)]
                self.trace["tensors"] = dict(self.tensors)
            end = time.monotonic_ns()
            rows = pending.rows
            # As Triton counts an ensemble: no queue of its own, compute is the sum of its steps' compute.
            version.stats.record_batch(
                requests=1, rows=rows, batch_size=rows if version.batched else 1, queue_ns=0,
                request_ns=end - pending.enqueue_ns, input_ns=0, infer_ns=self.compute_ns, output_ns=0,
            )
            version.recent.append((end, [pending.enqueue_ns]))
            resolve_all([(pending, outputs, None)])
        finally:
            scheduler._finished(self)

    def fail(self, step: PlannedStep | None, error: BaseException | None) -> None:
        """End the request with ``error`` (named after ``step``), or silently when ``error`` is None."""
        with self.lock:
            if self.over:
                return
            self.over = True
            outstanding = list(self.futures.values())
            self.futures.clear()
        for future in outstanding:
            future.cancel()  # still queued: its batcher drops it before the model runs
        scheduler, pending = self.scheduler, self.pending
        try:
            if error is not None:
                version = scheduler.version
                if step is not None:
                    error = step_error(version.name, version.version, step.label, error)
                version.stats.record_failure(requests=1, request_ns=time.monotonic_ns() - pending.enqueue_ns)
                resolve_all([(pending, None, error)])
        finally:
            scheduler._finished(self)


# ----------------------------------------------------------------------------- traced requests
def start_traced(
    core: Any,
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: int | str | None,
    outputs: Sequence[str] | None,
    priority: int,
    timeout_us: int,
) -> tuple[concurrent.futures.Future, Callable[[], int]]:
    """Queue one request that records a trace.

    Returns:
        A future of the :class:`Traced` outputs, and a function giving the version that served it.
    """
    loaded, pending = core._prepare(model, inputs, version, outputs, priority)
    done: concurrent.futures.Future = concurrent.futures.Future()
    # A caller that gives up (timeout, cancelled task) cancels the request too: what is queued is dropped.
    done.add_done_callback(lambda future: pending.waiter.cancel() if future.cancelled() else None)
    served = [loaded]
    if isinstance(loaded, EnsembleVersion):
        sink: dict[str, Any] = {}
        waiter = TimedFuture(lambda f, result, error: _settle(
            done, error, lambda: Traced(result, sink["steps"], sink["tensors"])))
        pending.waiter = waiter
        for _ in range(3):
            try:
                served[0].batcher.submit(pending, timeout_us, trace=sink)
                break
            except Closed:
                served[0] = core._route(model, version)
                if not isinstance(served[0], EnsembleVersion):
                    raise ModelNotReady("the ensemble is being reloaded", model=model, hint="send the request again") from None
        else:
            raise ModelNotReady("the ensemble is being reloaded", model=model, hint="send the request again")
    else:
        start = time.monotonic_ns()

        def one_step(f: TimedFuture, result: Any, error: BaseException | None) -> None:
            def traced() -> Traced:
                record = {
                    "step": 0, "model": model, "version": served[0].version, "inputs": pending.inputs,
                    "outputs": dict(result), "queue_us": f.queue_ns / 1000, "compute_us": f.compute_ns / 1000,
                    "start_us": 0.0, "end_us": (time.monotonic_ns() - start) / 1000,
                }
                return Traced(result, [record], {**pending.inputs, **result})

            _settle(done, error, traced)

        pending.waiter = TimedFuture(one_step)
        served[0] = core._submit(model, version, loaded, pending, timeout_us)
    return done, lambda: served[0].version


def _settle(done: concurrent.futures.Future, error: BaseException | None, build: Callable[[], Any]) -> None:
    if done.done():
        return
    try:
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(build())
    except concurrent.futures.InvalidStateError:
        pass  # the caller gave up (timeout) meanwhile
