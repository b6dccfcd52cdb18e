"""The inference core: loaded models and versions, routing, execution and statistics.

The core follows a :class:`~nbserve.registry.Registry`: every registered model is loaded (the
versions its ``version_policy`` selects), and re-registering a name swaps the new version in while
the old one drains, so no in-flight or new request fails. Each loaded version owns a
:class:`DynamicBatcher` whose instance threads run the model; the core itself holds no event loop
and can be called from any thread or loop (``infer`` awaits on the caller's loop).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import operator
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import ModelConfig, config_from
from ..errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady, NbserveError
from ..registry import ModelVersion, Registry, RegistryEvent
from ..repository import model_versions_to_load
from ..requests import InputChecker
from ..tensors import merge, split_rows, triton_dtype
from .batcher import Closed, DynamicBatcher, Pending
from .bundler import LoopBundler
from .sequence import SequenceBatcher, SequenceFlags, sequence_flags
from .ensemble_scheduler import EnsembleVersion, TimedFuture, Traced, start_traced
from .stats import ModelStats

__all__ = ["InferResult", "InferenceCore", "LoadedVersion", "EnsembleVersion", "Traced"]

RECENT_REQUESTS = 4096  # per version: at most this many latencies for dashboards
# LoadedVersion.recent keeps whole batches: 1024 of them hold 1024 (batch 1) to 65536 (batch 64)
# requests, a few MB at most, and plenty for percentiles between two dashboard samples.
RECENT_BATCHES = 1024

# Per-request fields read over a whole batch in C (map) rather than in a Python loop.
_rows_of = operator.attrgetter("rows")
_enqueued_of = operator.attrgetter("enqueue_ns")
_outputs_of = operator.attrgetter("outputs")
_waiter_of = operator.attrgetter("waiter")
_members_of = operator.attrgetter("members")


def _enqueue_times(batch: list[Pending]) -> list[int]:
    """When each request of a batch was sent: one per entry, or those of the requests it carries."""
    if not any(map(_members_of, batch)):
        return list(map(_enqueued_of, batch))
    return [t for p in batch for t in (p.members if p.members else (p.enqueue_ns,))]

EXTENSIONS = [
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "parameters",
]

@dataclasses.dataclass(slots=True)
class InferResult:
    model_name: str
    model_version: int
    outputs: dict[str, Any]
    id: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)

class LoadedVersion:
    """One served version: its config, runner, batcher and statistics."""

    def __init__(self, entry: ModelVersion, repository: Path | None = None) -> None:
        self.entry = entry
        self.name = entry.name
        self.version = entry.version
        self.config = entry.config
        self.batched = entry.config.max_batch_size > 0
        self.output_names = [t.name for t in entry.config.output]
        self.check_inputs = InputChecker(entry.config, entry.version)
        self.stats = ModelStats()
        # (end ns, [enqueue ns of each request]) of the latest successful batches, for percentiles
        # in dashboards: one entry per batch keeps the hot path from building a tuple per request.
        self.recent: collections.deque[tuple[int, list[int]]] = collections.deque(maxlen=RECENT_BATCHES)
        self.runner = entry.runner
        if entry.config.HasField("sequence_batching"):  # a stateful model: Triton's sequence batcher
            model_dir = repository / entry.name if repository is not None else None
            self.batcher = SequenceBatcher(entry.config, self._execute, label=f"{entry.name}-v{entry.version}",
                                           initial_state=entry.options.get("initial_state"), model_dir=model_dir)
            self.stats = self.batcher.stats  # Triton's statistics plus the active sequences
            self.runner = self.batcher.checked(entry.runner)
        else:
            self.batcher = DynamicBatcher(entry.config, self._execute, label=f"{entry.name}-v{entry.version}")
        self.sequenced = isinstance(self.batcher, SequenceBatcher)
        # Whether a loop's common requests may be queued together (serving/bundler.py): a model with
        # dynamic batching whose default queue has no timeout (a bundle's requests expire together).
        batcher = self.batcher
        self.bundles = (type(batcher) is DynamicBatcher and batcher.dynamic
                        and not batcher.policies[batcher.default_level - 1].default_timeout_ns)

    def _execute(self, batch: list[Pending]) -> list[tuple[Pending, Any, BaseException | None]]:
        """Run one batch in an instance thread; never raises (errors go to the batch's requests).

        This is the hot path of every request: per-request work is kept to one pass over the batch.
        """
        start = time.monotonic_ns()
        try:
            if len(batch) == 1:
                merged = batch[0].inputs
            else:
                merged = {name: merge([p.inputs[name] for p in batch]) for name in batch[0].inputs}
            input_done = time.monotonic_ns()
            outputs = self.runner(merged)
            infer_done = time.monotonic_ns()
            rows = sum(map(_rows_of, batch))
            results = self._split(batch, outputs, rows)
        except Exception as exc:
            end = time.monotonic_ns()
            error = exc if isinstance(exc, NbserveError) else InferenceError(
                f"the model raised {type(exc).__name__}: {exc}",
                model=self.name,
                version=self.version,
                hint="fix the model code; other requests and models keep being served",
            )
            if error is not exc:
                error.__cause__ = exc
            enqueued = _enqueue_times(batch)
            self.stats.record_failure(requests=len(enqueued), request_ns=end * len(enqueued) - sum(enqueued))
            return [(p, None, error) for p in batch]
        end = time.monotonic_ns()
        enqueued = _enqueue_times(batch)
        enqueued_sum = sum(enqueued)
        count = len(enqueued)
        if TimedFuture in set(map(type, map(_waiter_of, batch))):
            for pending in batch:  # ensemble steps and traced requests want their own times
                if type(pending.waiter) is TimedFuture:
                    pending.waiter.queue_ns, pending.waiter.compute_ns = start - pending.enqueue_ns, end - start
        self.stats.record_batch(
            requests=count,
            rows=rows,
            batch_size=rows if self.batched else 1,
            queue_ns=start * count - enqueued_sum,
            request_ns=end * count - enqueued_sum,
            input_ns=input_done - start,
            infer_ns=infer_done - input_done,
            output_ns=end - infer_done,
        )
        self.recent.append((end, enqueued))
        return results

    def _split(self, batch: list[Pending], outputs: Mapping[str, Any], rows: int) -> list[tuple[Pending, Any, None]]:
        if not isinstance(outputs, Mapping):
            raise InferenceError(
                "the model returned something other than a dict of outputs",
                model=self.name, version=self.version, got=type(outputs).__name__,
            )
        names = self.output_names
        missing = [n for n in names if n not in outputs]
        if missing:
            raise InferenceError(
                "the model did not produce every declared output",
                model=self.name,
                version=self.version,
                expected=names,
                got=sorted(outputs),
                hint="return every output named in the config",
            )
        members = batch[0].members
        if len(batch) == 1 and (members is None or len(members) == 1):  # one request: its outputs as they are
            wanted = batch[0].outputs
            return [(batch[0], {n: outputs[n] for n in (wanted or names)}, None)]
        for name in names:  # several requests share the rows: there must be one per input row
            got = outputs[name].shape[0] if getattr(outputs[name], "shape", ()) else None
            if got != rows:
                raise InferenceError(
                    "the model returned a different number of rows than it was given",
                    model=self.name,
                    version=self.version,
                    tensor=name,
                    expected=rows,
                    got=got,
                    hint="a batched model must return one output row per input row",
                )
        count = len(batch)
        if rows == count and not any(map(_outputs_of, batch)) and all(
            type(outputs[n]) is np.ndarray for n in names
        ):
            # The common batch: one row per request, every output wanted.
            answers = split_rows({n: outputs[n] for n in names}, count)
            return [(p, answer, None) for p, answer in zip(batch, answers)]
        results, start = [], 0
        for pending in batch:
            stop = start + pending.rows
            results.append((pending, {n: outputs[n][start:stop] for n in (pending.outputs or names)}, None))
            start = stop
        return results

    def close(self, *, drain: bool = True) -> None:
        self.batcher.close(drain=drain)

class InferenceCore:
    """Serves the models of a registry (see module docstring)."""

    def __init__(self, registry: Registry, *, repository: str | Path | None = None, name: str = "nbserve") -> None:
        self.registry = registry
        self.repository = Path(repository) if repository is not None else None
        self.name = name
        self._lock = threading.RLock()
        self._routes: dict[str, dict[int, LoadedVersion]] = {}
        # The latest version of each model, for the request that names no version (the common one);
        # kept with _routes, under _lock.
        self._latest: dict[str, LoadedVersion] = {}
        self._unloaded: dict[str, str] = {}  # name -> reason
        self._bundlers: dict[asyncio.AbstractEventLoop, LoopBundler] = {}  # loops with requests to queue
        self._retiring: list[threading.Thread] = []
        self._unsubscribe = None
        self._closed = False

    # --------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for name in self.registry.names():
            self._sync_model(name)
        self._unsubscribe = self.registry.subscribe(self._on_registry_event)

    def close(self, *, drain: bool = True, timeout_s: float = 10.0) -> None:
        """Stop every version; with ``drain`` their queued requests run first."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._lock:
            self._closed = True
            loaded = [v for versions in self._routes.values() for v in versions.values()]
            self._routes.clear()
            self._latest.clear()
        for version in loaded:
            version.close(drain=drain)
        deadline = time.monotonic() + timeout_s
        for thread in self._retiring:
            thread.join(max(deadline - time.monotonic(), 0))

    def threads(self) -> list[threading.Thread]:
        with self._lock:
            loaded = [v for versions in self._routes.values() for v in versions.values()]
        return [t for v in loaded for t in v.batcher.threads] + list(self._retiring)

    def _on_registry_event(self, event: RegistryEvent) -> None:
        if self._closed or event.name in self._unloaded:
            return
        self._sync_model(event.name)

    def _sync_model(self, name: str) -> None:
        """Load the versions the policy selects; retire the rest after they drain."""
        model = self.registry.get(name) if name in self.registry else None
        with self._lock:
            if self._closed:
                return
            current = self._routes.get(name, {})
            wanted: dict[int, ModelVersion] = {}
            if model is not None:
                config = model.config
                for number in model_versions_to_load(config, model.versions):
                    wanted[number] = model.versions[number]
            new_routes = {}
            for number, entry in wanted.items():
                loaded = current.get(number)
                new_routes[number] = loaded if loaded is not None and loaded.entry is entry else self._load(entry)
            retired = [v for n, v in current.items() if new_routes.get(n) is not v]
            if new_routes:
                self._routes[name] = new_routes
                self._latest[name] = new_routes[max(new_routes)]
            else:
                self._routes.pop(name, None)
                self._latest.pop(name, None)
        for version in retired:
            self._retire(version)

    def _load(self, entry: ModelVersion) -> LoadedVersion | EnsembleVersion:
        # An ensemble's steps run through the core, each in its own model's batcher.
        if entry.config.platform == "ensemble":
            return EnsembleVersion(entry, self)
        return LoadedVersion(entry, self.repository)

    def _retire(self, version: LoadedVersion) -> None:
        # Drain in the background: the registering cell returns at once, queued requests still run.
        thread = threading.Thread(target=version.close, name=f"nbserve-retire-{version.name}", daemon=True)
        thread.start()
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]

    # --------------------------------------------------------------------- routing
    def _route(self, model: str, version: int | str | None) -> LoadedVersion:
        versions = self._routes.get(model)
        if versions is None:
            if model in self._unloaded:
                raise ModelNotReady("the model is unloaded", model=model,
                                    hint=f"load it with POST /v2/repository/models/{model}/load")
            if model in self.registry:
                raise ModelNotReady("the model is not loaded", model=model)
            known = self.registry.names()
            import difflib

            close = difflib.get_close_matches(model, known, n=1)
            raise ModelNotFound(
                "unknown model",
                model=model,
                expected=f"one of {known}" if known else None,
                hint=f"did you mean '{close[0]}'?" if close else "register it with nbserve.register(obj, name=...)",
            )
        if version in (None, "", 0, -1, "-1"):
            return self._latest[model]  # kept with _routes
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise InvalidInput("version must be an integer", model=model, got=repr(version)) from None
        loaded = versions.get(number)
        if loaded is None:
            raise ModelNotFound(
                "this version is not served",
                model=model,
                version=number,
                expected=f"one of {sorted(versions)}",
                hint="leave the version out for the latest, or change version_policy to serve more versions",
            )
        return loaded

    def _prepare(
        self,
        model: str,
        inputs: Mapping[str, Any],
        version: int | str | None,
        outputs: Sequence[str] | None,
        priority: int,
    ) -> tuple[LoadedVersion, Pending]:
        loaded = self._route(model, version)
        checked, rows, key = loaded.check_inputs.prepare(inputs)
        if outputs:
            unknown = [o for o in outputs if o not in loaded.output_names]
            if unknown:
                raise InvalidInput(
                    f"unknown output {', '.join(repr(u) for u in unknown)}",
                    model=model,
                    version=loaded.version,
                    expected=loaded.output_names,
                    got=list(outputs),
                    hint="request only outputs named in the model's config",
                )
        batcher = loaded.batcher
        if priority and not 1 <= priority <= batcher.levels:
            raise InvalidInput(
                "priority out of range",
                model=model,
                expected=f"0 (default) or 1..{batcher.levels}",
                got=priority,
                hint="set priority_levels in dynamic_batching to use priorities",
            )
        pending = Pending(checked, rows, key, list(outputs) if outputs else None, None,
                          batcher.level_for(priority))
        return loaded, pending

    def _submit(self, model: str, version: Any, loaded: LoadedVersion, pending: Pending, timeout_us: int,
                sequence: SequenceFlags | None = None) -> LoadedVersion:
        """Queue; if the version was retired between routing and queueing, route again."""
        for _ in range(3):
            try:
                if loaded.sequenced:
                    loaded.batcher.submit(pending, timeout_us, sequence)
                else:
                    loaded.batcher.submit(pending, timeout_us)
                return loaded
            except Closed:
                loaded = self._route(model, version)
        raise ModelNotReady("the model is being reloaded", model=model, hint="send the request again")

    # --------------------------------------------------------------------- inference
    def submit(
        self,
        model: str,
        inputs: Mapping[str, Any],
        waiter: Any,
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        parameters: Mapping[str, Any] | None = None,
        sequence_id: int | str = 0,
        sequence_start: bool = False,
        sequence_end: bool = False,
    ) -> LoadedVersion:
        """Check and queue one request; safe to call from any thread.

        The request's outputs (a dict of arrays) or its error go to ``waiter`` exactly once, from the
        thread that ran its batch: an ``asyncio.Future`` is resolved on its own loop (one
        ``call_soon_threadsafe`` per batch and loop), a ``concurrent.futures.Future`` directly, and so
        is any other object with ``done()``, ``set_result()`` and ``set_exception()`` (keep those quick:
        they run in the model's instance thread). A waiter that is already done when its batch forms
        (cancelled) is dropped without running.

        Returns:
            the version the request was queued on (read its ``version`` once the waiter is done: a
            version retired between routing and queueing sends the request to its successor).

        Raises:
            ModelNotFound, ModelNotReady, InvalidInput, ServerBusy: before anything is queued.
        """
        if version is None and not (outputs or priority or parameters or sequence_id):
            # The common request (latest version, every output, default priority): the fewest steps
            # from the caller to the queue. Anything unusual takes the general path below.
            loaded = self._latest.get(model)
            if loaded is not None and not loaded.sequenced:
                checked, rows, key = loaded.check_inputs.prepare(inputs)
                batcher = loaded.batcher
                try:
                    batcher.submit(Pending(checked, rows, key, None, waiter, batcher.default_level), timeout_us)
                    return loaded
                except Closed:
                    pass  # retired meanwhile: the general path routes again
        loaded, pending = self._prepare(model, inputs, version, outputs, priority)
        pending.waiter = waiter
        sequence = (sequence_flags(model, parameters, sequence_id, sequence_start, sequence_end)
                    if parameters or sequence_id else None)
        return self._submit(model, version, loaded, pending, timeout_us, sequence)

    def submit_soon(self, model: str, inputs: Mapping[str, Any]) -> asyncio.Future:
        """Check the common request (latest version, every output, default priority) from a
        coroutine and return the future of its outputs.

        The request is queued at the end of the running loop's iteration together with the others
        sent to the same version in it (see serving/bundler.py); a model that cannot take bundles
        gets it on its own at once. Raises as :meth:`submit` does, before anything is queued.
        """
        loop = asyncio.get_running_loop()
        loaded = self._latest.get(model)
        if loaded is None or not loaded.bundles:
            waiter = loop.create_future()
            self.submit(model, inputs, waiter)
            return waiter
        checked, rows, key = loaded.check_inputs.prepare(inputs)
        bundler = self._bundlers.get(loop)
        if bundler is None:
            bundler = self._bundlers[loop] = LoopBundler(loop, self, self._bundlers.pop)
        return bundler.add(model, loaded, checked, rows, key)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        request_id: str = "",
        parameters: Mapping[str, Any] | None = None,
        trace: bool = False,
        sequence_id: int | str = 0,
        sequence_start: bool = False,
        sequence_end: bool = False,
    ) -> InferResult:
        """Run one request through the model's batcher; awaits on the caller's event loop.

        With ``trace`` the outputs are a :class:`Traced` dict whose ``trace`` holds what every step
        (of an ensemble; the model itself otherwise) read, wrote, waited and computed.
        ``sequence_id``/``sequence_start``/``sequence_end`` (or the request parameters of the same
        names, as HTTP and gRPC carry them) address a sequence of a stateful model.
        """
        if trace:
            future, served = start_traced(self, model, inputs, version=version, outputs=outputs, priority=priority,
                                          timeout_us=timeout_us)
            traced = await asyncio.wrap_future(future)
            return InferResult(model, served(), traced, request_id)
        waiter = asyncio.get_running_loop().create_future()
        loaded = self.submit(model, inputs, waiter, version=version, outputs=outputs, priority=priority,
                             timeout_us=timeout_us, parameters=parameters, sequence_id=sequence_id,
                             sequence_start=sequence_start, sequence_end=sequence_end)
        return InferResult(model, loaded.version, await waiter, request_id)

    def infer_sync(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        request_id: str = "",
        timeout_s: float | None = None,
        trace: bool = False,
        parameters: Mapping[str, Any] | None = None,
        sequence_id: int | str = 0,
        sequence_start: bool = False,
        sequence_end: bool = False,
    ) -> InferResult:
        """The same as :meth:`infer` for plain threads (no event loop involved)."""
        if trace:
            future, served = start_traced(self, model, inputs, version=version, outputs=outputs, priority=priority,
                                          timeout_us=timeout_us)
            return InferResult(model, served(), self._wait(future, model, timeout_s), request_id)
        waiter: concurrent.futures.Future = concurrent.futures.Future()
        loaded = self.submit(model, inputs, waiter, version=version, outputs=outputs, priority=priority,
                             timeout_us=timeout_us, parameters=parameters, sequence_id=sequence_id,
                             sequence_start=sequence_start, sequence_end=sequence_end)
        return InferResult(model, loaded.version, self._wait(waiter, model, timeout_s), request_id)

    @staticmethod
    def _wait(waiter: concurrent.futures.Future, model: str, timeout_s: float | None) -> Any:
        try:
            return waiter.result(timeout_s)
        except concurrent.futures.TimeoutError:
            waiter.cancel()
            raise InferenceError(
                "no answer within the client timeout",
                model=model,
                expected=f"a result within {timeout_s} s",
                hint="raise timeout_s, or check the model's speed with nbserve.bench",
            ) from None

    # --------------------------------------------------------------------- metadata
    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "version": __version__, "extensions": list(EXTENSIONS)}

    def live(self) -> bool:
        return not self._closed

    def ready(self) -> bool:
        return not self._closed

    def model_ready(self, model: str, version: int | str | None = None) -> bool:
        """Whether requests for the model (and version) are served now; as in Triton, an ensemble is
        ready only while every model its steps call is ready too."""
        try:
            loaded = self._route(model, version)
        except NbserveError:
            return False
        if isinstance(loaded, EnsembleVersion):
            return all(
                self.model_ready(step.model_name, step.model_version if step.model_version > 0 else None)
                for step in loaded.config.ensemble_scheduling.step
            )
        return True

    def served_version(self, model: str, version: int | str | None = None) -> int:
        """The version number a request for ``model`` (and ``version``: None for the latest) goes to now."""
        return self._route(model, version).version

    def model_config(self, model: str, version: int | str | None = None) -> ModelConfig:
        return self._route(model, version).config

    def model_metadata(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        loaded = self._route(model, version)
        config = loaded.config
        batch = [-1] if config.max_batch_size > 0 else []

        def tensors(items: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": triton_dtype(t.data_type), "shape": batch + list(t.dims)} for t in items]

        versions = sorted(self._routes.get(model, {}))
        return {
            "name": model,
            "versions": [str(v) for v in versions],
            "platform": config.platform or config.backend,
            "inputs": tensors(config.input),
            "outputs": tensors(config.output),
        }

    def model_statistics(self, model: str = "", version: int | str = "") -> dict[str, Any]:
        with self._lock:
            if model:
                if model not in self._routes:
                    self._route(model, None)  # raises the right error
                selected = [self._route(model, version)] if version not in ("", None) else list(self._routes[model].values())
            else:
                selected = [v for name in sorted(self._routes) for _, v in sorted(self._routes[name].items())]
        return {"model_stats": [v.stats.to_json(v.name, v.version) for v in selected]}

    def recent_latencies(self, model: str, version: int | str, since_ns: int = 0) -> list[int]:
        """Durations in ns (queue + compute) of a version's latest successful requests that ended after
        ``since_ns`` (``time.monotonic_ns``); at most ``RECENT_REQUESTS``. Read-only, for dashboards."""
        with self._lock:
            loaded = self._routes.get(model, {}).get(int(version))
        batches = list(getattr(loaded, "recent", ()))
        return [end - enqueued for end, batch in batches if end > since_ns for enqueued in batch][-RECENT_REQUESTS:]

    def loaded_versions(self) -> list[LoadedVersion]:
        with self._lock:
            return [v for name in sorted(self._routes) for _, v in sorted(self._routes[name].items())]

    def repository_index(self, ready: bool = False) -> list[dict[str, Any]]:
        names = set(self.registry.names())
        if self.repository is not None and self.repository.is_dir():
            names.update(p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file())
        index = []
        for name in sorted(names):
            versions = self._routes.get(name)
            if versions:
                index.extend({"name": name, "version": str(v), "state": "READY", "reason": ""} for v in sorted(versions))
            elif not ready:
                reason = self._unloaded.get(name, "not loaded")
                index.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
        return index

    # --------------------------------------------------------------------- repository control
    async def load_model(self, model: str, config: str | None = None) -> None:
        await asyncio.to_thread(self.load_model_sync, model, config)

    def load_model_sync(self, model: str, config: str | None = None) -> None:
        """Load (or reload) a model: from the repository folder when serving one, else the registry."""
        if self.repository is not None and (self.repository / model / "config.pbtxt").is_file():
            from ..repository import load_model_dir, read_model_config

            model_config = read_model_config(self.repository / model)
            if config:
                model_config = config_from(_json_config(config, model))
            self._unloaded.pop(model, None)
            load_model_dir(self.repository / model, model_config, self.registry)
            self._sync_model(model)
            return
        if model not in self.registry:
            self._route(model, None)  # raises ModelNotFound with a hint
        if config:
            current = self.registry.get(model).latest
            new_config = config_from(_json_config(config, model))
            self.registry.add(dataclasses.replace(current, config=new_config, version=current.version))
        self._unloaded.pop(model, None)
        self._sync_model(model)

    async def unload_model(self, model: str, unload_dependents: bool = False) -> None:
        self.unload_model_sync(model, unload_dependents)

    def unload_model_sync(self, model: str, unload_dependents: bool = False) -> None:
        if model not in self._routes and model not in self.registry:
            self._route(model, None)
        with self._lock:
            versions = self._routes.pop(model, {})
            self._latest.pop(model, None)
            self._unloaded[model] = "unloaded"
        for version in versions.values():
            self._retire(version)
        if unload_dependents:
            for name, loaded in list(self._routes.items()):
                config = next(iter(loaded.values())).config
                if any(step.model_name == model for step in config.ensemble_scheduling.step):
                    self.unload_model_sync(name)

def _json_config(text: str, model: str) -> dict[str, Any]:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput("the config override is not valid JSON", model=model, got=str(exc),
                           hint="send the ModelConfig as JSON, as Triton's load API expects") from None
