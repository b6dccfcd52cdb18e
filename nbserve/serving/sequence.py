"""Triton's sequence batcher, for one loaded version of a stateful model.

A model whose config has ``sequence_batching`` gets this scheduler instead of the dynamic batcher.
As in Triton's C++ scheduler:

* every request names its sequence (``sequence_id``: a non-zero uint64 or a non-empty string); the
  first request of a sequence carries ``sequence_start`` and the last ``sequence_end``;
* a started sequence is pinned to one model instance for its lifetime; the requests of a sequence
  run one at a time, in arrival order, and a batch holds at most one request per sequence;
* ``direct``: each instance has ``max_batch_size`` slots (1 when the model does not batch), one per
  sequence; a batch is every sequence of the instance with a request ready (in slot order), run at
  once, or once ``minimum_slot_utilization`` of the slots are ready or ``max_queue_delay_microseconds``
  has passed when that is set;
* ``oldest``: each instance keeps up to ``max_candidate_sequences`` sequences (default
  ``max_batch_size``) and batches their oldest ready requests dynamically (``preferred_batch_size``,
  ``max_queue_delay_microseconds``), so one batch mixes many sequences;
* control inputs (``CONTROL_SEQUENCE_START``/``END``/``READY``/``CORRID``) are added to every request
  with the data types and false/true values the config gives; implicit ``state`` is added as the
  input ``input_name`` (the sequence's last ``output_name``, or ``initial_state`` on its first
  request) and the model's ``output_name`` is kept for the next request; it reaches the client only
  when the config lists it as an output;
* a sequence with no request for ``max_sequence_idle_microseconds`` (default 1 s) is released, and
  so is a sequence once its ``sequence_end`` request has run.

Where nbserve differs on purpose, it is to answer instead of waiting: Triton keeps sequences beyond
the free slots in a backlog until a slot frees (possibly only at the idle timeout); nbserve refuses
them at once with ``ServerBusy`` naming the capacity. Triton silently restarts a sequence whose id
is already active; nbserve refuses the reused id. Batches hold only real requests (Triton's direct
strategy pads empty slots with "null" requests whose READY control is false, so READY is always
true here).

Invariant (as in the dynamic batcher): every submitted request is resolved exactly once, with its
outputs, the model's error or a rejection at shutdown; requests cancelled while queued are dropped
before the model runs.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import (
    ConfigError,
    InferenceError,
    InvalidInput,
    ModelNotReady,
    ServerBusy,
)
from ..tensors import deserialize_bytes, numpy_dtype, shape_matches, triton_dtype
from .batcher import DEFAULT_MAX_QUEUE_SIZE, Closed, Pending, resolve_all
from .stats import ModelStats

__all__ = [
    "DEFAULT_IDLE_MICROSECONDS",
    "SequenceBatcher",
    "SequenceFlags",
    "SequenceStats",
    "sequence_flags",
    "validate_sequence_batching",
]

#: Triton's default for ``max_sequence_idle_microseconds`` (when unset or 0).
DEFAULT_IDLE_MICROSECONDS = 1_000_000
_START, _READY, _END, _CORRID = 0, 1, 2, 3  # ModelSequenceBatching.Control.Kind values
_KIND_NAMES = {_START: "CONTROL_SEQUENCE_START", _READY: "CONTROL_SEQUENCE_READY",
               _END: "CONTROL_SEQUENCE_END", _CORRID: "CONTROL_SEQUENCE_CORRID"}
_CORRID_TYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")
_UINT64_MAX = 2**64 - 1
_RECENTLY_RELEASED = 4096  # ids remembered to explain "no started sequence" errors


# ----------------------------------------------------------------------------- request flags
@dataclasses.dataclass(frozen=True, slots=True)
class SequenceFlags:
    """What a request says about its sequence (Triton's request parameters of the same names)."""

    id: int | str = 0
    start: bool = False
    end: bool = False


def sequence_flags(
    model: str,
    parameters: Mapping[str, Any] | None = None,
    sequence_id: int | str = 0,
    sequence_start: bool = False,
    sequence_end: bool = False,
) -> SequenceFlags:
    """The sequence flags of a request: keyword arguments, else the request ``parameters``.

    HTTP and gRPC requests carry ``sequence_id``, ``sequence_start`` and ``sequence_end`` as request
    parameters (that is how tritonclient sends them); the in-process API passes them as arguments.

    Raises:
        InvalidInput: an id that is not a uint64 or a string, or flags that are not booleans.
    """
    params = parameters or {}
    if not sequence_id and "sequence_id" in params:
        sequence_id = params["sequence_id"]
    if not sequence_start and "sequence_start" in params:
        sequence_start = params["sequence_start"]
    if not sequence_end and "sequence_end" in params:
        sequence_end = params["sequence_end"]
    if isinstance(sequence_id, np.integer):
        sequence_id = int(sequence_id)
    if isinstance(sequence_id, bytes):
        sequence_id = sequence_id.decode("utf-8", "replace")
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, (int, str)) or (
        isinstance(sequence_id, int) and not 0 <= sequence_id <= _UINT64_MAX
    ):
        raise InvalidInput(
            "sequence_id must be an unsigned 64-bit integer or a string",
            model=model,
            got=repr(sequence_id),
            hint="send e.g. sequence_id=42 (tritonclient: client.infer(..., sequence_id=42, sequence_start=True))",
        )
    for key, value in (("sequence_start", sequence_start), ("sequence_end", sequence_end)):
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidInput(f"parameter '{key}' must be true or false", model=model, got=repr(value),
                               hint=f"send {key}=True or leave it out")
    return SequenceFlags(sequence_id, bool(sequence_start), bool(sequence_end))


# ----------------------------------------------------------------------------- config
class _Control:
    """One control input: its name, kind, and how true/false (or the id) are written."""

    __slots__ = ("dtype", "false", "kind", "name", "true", "wire")

    def __init__(self, name: str, kind: int, dtype: np.dtype, false: Any = None, true: Any = None,
                 wire: str = "") -> None:
        self.name, self.kind, self.dtype, self.false, self.true, self.wire = name, kind, dtype, false, true, wire

    def value(self, flags: SequenceFlags) -> Any:
        if self.kind == _START:
            return self.true if flags.start else self.false
        if self.kind == _END:
            return self.true if flags.end else self.false
        if self.kind == _READY:
            return self.true  # only real requests are batched (no null requests for empty slots)
        if self.wire == "BYTES":
            return str(flags.id).encode("utf-8")
        # Triton truncates the id to the low-order bits of 32-bit types; wrap signed types alike.
        bits = 32 if self.dtype.itemsize == 4 else 64
        return np.array(int(flags.id) & ((1 << bits) - 1), dtype=f"uint{bits}").astype(self.dtype)

    def tensor(self, flags: SequenceFlags, batched: bool) -> np.ndarray:
        shape = (1, 1) if batched else (1,)
        out = np.empty(shape, dtype=self.dtype)
        out[...] = self.value(flags)
        return out


class _State:
    """One implicit state: input/output names, dtype, dims and its initial value (one item)."""

    __slots__ = ("dims", "dtype", "initial", "input_name", "output_name", "wire")

    def __init__(self, input_name: str, output_name: str, wire: str, dims: list[int], initial: Any) -> None:
        self.input_name, self.output_name, self.wire = input_name, output_name, wire
        self.dtype = np.dtype(object) if wire == "BYTES" else numpy_dtype(wire)
        self.dims, self.initial = dims, initial


def _controls(config: ModelConfig) -> list[_Control]:
    controls = []
    for control_input in config.sequence_batching.control_input:
        control = control_input.control[0]
        if control.kind == _CORRID:
            wire = triton_dtype(control.data_type)
            controls.append(_Control(control_input.name, _CORRID, np.dtype(object) if wire == "BYTES"
                                     else numpy_dtype(wire), wire=wire))
            continue
        for values, dtype in ((control.int32_false_true, np.int32), (control.fp32_false_true, np.float32),
                              (control.bool_false_true, np.bool_)):
            if values:
                controls.append(_Control(control_input.name, control.kind, np.dtype(dtype), values[0], values[1]))
    return controls


def validate_sequence_batching(config: ModelConfig) -> ModelConfig:
    """Raise ConfigError for a ``sequence_batching`` section Triton would refuse (or nbserve cannot run).

    Returns:
        The config, unchanged.
    """
    name, sb = config.name, config.sequence_batching
    inputs = {t.name for t in config.input}
    outputs = {t.name: t for t in config.output}
    seen: set[str] = set()
    for control_input in sb.control_input:
        where = f"sequence_batching control_input '{control_input.name}'"
        if not control_input.name:
            raise ConfigError("a sequence_batching control_input has no name", model=name,
                              hint='name it, e.g. control_input [{ name: "START" control [...] }]')
        if control_input.name in inputs or control_input.name in seen:
            raise ConfigError(f"{where} is also declared as a model input (or twice)", model=name,
                              hint="Triton fills control inputs itself: remove it from input [...] and name it once")
        seen.add(control_input.name)
        if len(control_input.control) != 1:
            raise ConfigError(f"{where} must hold exactly one control", model=name, got=len(control_input.control),
                              hint="declare one control_input per control kind")
        control = control_input.control[0]
        if control.kind == _CORRID:
            if not control.data_type or triton_dtype(control.data_type) not in _CORRID_TYPES:
                raise ConfigError(f"{where}: CONTROL_SEQUENCE_CORRID needs a data_type", model=name,
                                  expected="TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING",
                                  got=control.data_type, hint="data_type: TYPE_UINT64")
            continue
        given = [f for f, values in (("int32_false_true", control.int32_false_true),
                                     ("fp32_false_true", control.fp32_false_true),
                                     ("bool_false_true", control.bool_false_true)) if values]
        sizes = [len(getattr(control, f)) for f in given]
        if len(given) != 1 or sizes != [2]:
            raise ConfigError(
                f"{where}: {_KIND_NAMES.get(control.kind, control.kind)} needs exactly one of int32_false_true, "
                "fp32_false_true or bool_false_true, with two values (false, true)",
                model=name, got=", ".join(f"{f} ({n} values)" for f, n in zip(given, sizes)) or "none",
                hint="int32_false_true: [0, 1]",
            )
    for state in sb.state:
        where = f"sequence_batching state '{state.input_name}'"
        if not state.input_name or not state.output_name:
            raise ConfigError("a sequence_batching state needs input_name and output_name", model=name,
                              hint='state [{ input_name: "h" output_name: "h" data_type: TYPE_FP32 dims: [4] }]')
        if state.input_name in inputs or state.input_name in seen:
            raise ConfigError(f"{where} is also declared as a model input or control", model=name,
                              hint="the server fills the input state itself: remove it from input [...]")
        seen.add(state.input_name)
        if not state.data_type or not state.dims or any(d == 0 or d < -1 for d in state.dims):
            raise ConfigError(f"{where} needs a data_type and dims (positive or -1)", model=name,
                              got=f"data_type {state.data_type}, dims {list(state.dims)}",
                              hint="data_type: TYPE_FP32 dims: [4]")
        if state.output_name in outputs and outputs[state.output_name].data_type != state.data_type:
            raise ConfigError(f"{where}: output '{state.output_name}' has another data_type than the state",
                              model=name, hint="give the state output the state's data_type")
        for initial in state.initial_state[:1]:
            if initial.data_type != state.data_type or any(d < 1 for d in initial.dims) or not shape_matches(
                list(state.dims), list(initial.dims)
            ):
                raise ConfigError(f"{where}: initial_state must have the state's data_type and fixed dims that fit",
                                  model=name, expected=f"{triton_dtype(state.data_type)} {list(state.dims)}",
                                  got=f"{triton_dtype(initial.data_type) if initial.data_type else '?'} "
                                      f"{list(initial.dims)}",
                                  hint="initial_state: { data_type: <the state's> dims: [...] zero_data: true }")
            if initial.WhichOneof("state_data") is None:
                raise ConfigError(f"{where}: initial_state needs zero_data or data_file", model=name,
                                  hint="initial_state: { ... zero_data: true }")
        if not state.initial_state and -1 in state.dims:
            raise ConfigError(f"{where} has variable dims and no initial_state", model=name, got=list(state.dims),
                              hint="add initial_state with fixed dims for the first request of a sequence")
    if sb.HasField("oldest"):
        oldest = sb.oldest
        if oldest.max_candidate_sequences < 0:
            raise ConfigError("oldest.max_candidate_sequences must be >= 0", model=name,
                              got=oldest.max_candidate_sequences, hint="leave it out for max_batch_size")
        for size in oldest.preferred_batch_size:
            if not 1 <= size <= max(config.max_batch_size, 1):
                raise ConfigError("oldest.preferred_batch_size must lie between 1 and max_batch_size", model=name,
                                  expected=f"1..{max(config.max_batch_size, 1)}", got=size,
                                  hint="drop it or raise max_batch_size")
    if sb.HasField("direct") and not 0.0 <= sb.direct.minimum_slot_utilization <= 1.0:
        raise ConfigError("direct.minimum_slot_utilization must lie between 0 and 1", model=name,
                          got=sb.direct.minimum_slot_utilization, hint="0.5 runs once half the slots are ready")
    return config


def _states(config: ModelConfig, initial: Mapping[str, Any], model_dir: Path | None) -> list[_State]:
    states = []
    for state in config.sequence_batching.state:
        wire = triton_dtype(state.data_type)
        value = initial.get(state.input_name)
        if value is None:
            value = _initial_value(config.name, state, wire, model_dir)
        states.append(_State(state.input_name, state.output_name, wire, list(state.dims), value))
    return states


def _initial_value(model: str, state: Any, wire: str, model_dir: Path | None) -> np.ndarray:
    dtype = np.dtype(object) if wire == "BYTES" else numpy_dtype(wire)
    if not state.initial_state:  # Triton leaves the buffer uninitialised; zeros are the safe reading
        return np.zeros(list(state.dims), dtype) if wire != "BYTES" else np.full(list(state.dims), b"", dtype)
    initial = state.initial_state[0]
    dims = list(initial.dims)
    if initial.WhichOneof("state_data") == "zero_data":
        return np.zeros(dims, dtype) if wire != "BYTES" else np.full(dims, b"", dtype)
    path = model_dir / "initial_state" / initial.data_file if model_dir is not None else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"the initial_state file of state '{state.input_name}' was not found",
            model=model,
            expected=f"<model folder>/initial_state/{initial.data_file}",
            got=str(path) if path else "no model folder (the model was not read from a repository)",
            hint="put the file there, or register with nbserve.register_stateful(..., state=StateSpec(..., initial=array))",
        )
    data = path.read_bytes()
    if wire == "BYTES":
        return deserialize_bytes(data, dims, tensor=state.input_name, model=model)
    count = math.prod(dims)
    if len(data) != count * dtype.itemsize:
        raise ConfigError(f"the initial_state file of state '{state.input_name}' has the wrong size", model=model,
                          expected=f"{count * dtype.itemsize} bytes ({wire} {dims})", got=f"{len(data)} bytes",
                          hint="write the raw row-major values, e.g. array.astype(dtype).tobytes()")
    return np.frombuffer(data, dtype=dtype).reshape(dims).copy()


def _copy(value: Any) -> Any:
    # The model's output rows are views of a whole batch: keep only this sequence's row.
    if isinstance(value, np.ndarray):
        return value.copy()
    clone = getattr(value, "clone", None) or getattr(value, "copy", None)
    return clone() if clone is not None else value


# ----------------------------------------------------------------------------- statistics
class SequenceStats(ModelStats):
    """Triton's statistics plus a ``sequence_stats`` entry: active sequences and their history.

    gRPC's ModelStatisticsResponse has no such field (it is dropped there); HTTP and the in-process
    API show it.
    """

    def __init__(self, batcher: SequenceBatcher) -> None:
        super().__init__()
        self._batcher = batcher

    def to_json(self, name: str, version: int | str) -> dict[str, Any]:
        out = super().to_json(name, version)
        out["sequence_stats"] = self._batcher.sequence_stats()
        return out


# ----------------------------------------------------------------------------- scheduler
@dataclasses.dataclass(eq=False, slots=True)
class _Sequence:
    id: int | str
    instance: int
    slot: int
    started_ns: int
    last_ns: int
    queue: collections.deque = dataclasses.field(default_factory=collections.deque)
    state: dict[str, Any] | None = None  # input_name -> last output state (one item, batch dim kept)
    running: bool = False
    ending: bool = False  # its sequence_end request is queued or running
    steps: int = 0


@dataclasses.dataclass(eq=False, slots=True)
class _Step:
    """One request taken into a batch, with what is needed to finish it."""

    sequence: _Sequence
    pending: Pending
    flags: SequenceFlags
    wanted: list[str]


class SequenceBatcher:
    """Sequence slots, per-sequence queues, state and instance threads for one model version.

    Args:
        config: the version's ModelConfig (with ``sequence_batching``).
        execute: called in an instance thread with a non-empty batch (the dynamic batcher's
            contract); returns one ``(pending, result, error)`` per request and never raises.
        label: "model vN", for thread names.
        initial_state: input_name -> the initial state of one item, overriding ``initial_state``
            of the config (models registered in the kernel keep their initial arrays here).
        model_dir: the model's folder in a repository, where ``initial_state`` data files live.

    Raises:
        ConfigError: the sequence_batching section is invalid.
    """

    def __init__(
        self,
        config: ModelConfig,
        execute: Callable[[list[Pending]], list[tuple[Pending, Any, BaseException | None]]],
        *,
        label: str,
        initial_state: Mapping[str, Any] | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        validate_sequence_batching(config)
        sb = config.sequence_batching
        self.model = config.name
        self.label = label
        self.max_batch_size = max(config.max_batch_size, 0)
        self.batched = self.max_batch_size > 0
        self.max_rows = max(self.max_batch_size, 1)
        self.strategy = "oldest" if sb.HasField("oldest") else "direct"
        self.idle_us = sb.max_sequence_idle_microseconds or DEFAULT_IDLE_MICROSECONDS
        self.idle_ns = self.idle_us * 1000
        if self.strategy == "oldest":
            self.per_instance = sb.oldest.max_candidate_sequences or self.max_rows
            self.delay_ns = sb.oldest.max_queue_delay_microseconds * 1000
            preferred = sorted({p for p in sb.oldest.preferred_batch_size if p <= self.max_rows})
            self.preferred = preferred
            self.target = preferred[-1] if preferred else self.max_rows
            self.min_ready = 0
        else:
            self.per_instance = self.max_rows
            self.delay_ns = sb.direct.max_queue_delay_microseconds * 1000
            self.preferred = []
            self.target = self.max_rows
            # Without a minimum utilization Triton runs whatever is ready and ignores the delay.
            utilization = sb.direct.minimum_slot_utilization
            self.min_ready = math.ceil(utilization * self.per_instance) if utilization > 0 and self.delay_ns else 0
        self.instances = sum(max(g.count, 1) for g in config.instance_group) or 1
        self.capacity = self.instances * self.per_instance
        self.levels = self.default_level = 1  # priorities are a dynamic-batching feature
        self.outputs = [t.name for t in config.output]
        self.controls = _controls(config)
        self._corrid_numeric = any(c.kind == _CORRID and c.wire != "BYTES" for c in self.controls)
        self.states = _states(config, initial_state or {}, Path(model_dir) if model_dir is not None else None)
        self.stats = SequenceStats(self)
        self._execute = execute
        self._lock = threading.Lock()
        self._conds = [threading.Condition(self._lock) for _ in range(self.instances)]
        self._pools: list[list[_Sequence | None]] = [[None] * self.per_instance for _ in range(self.instances)]
        self._sequences: dict[int | str, _Sequence] = {}
        self._released: collections.OrderedDict[int | str, str] = collections.OrderedDict()
        self._counts = {"started": 0, "ended": 0, "idle_released": 0}
        self._queued = 0
        self._busy = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._instance_loop, args=(i,), name=f"nbserve-{label}-seq{i}", daemon=True)
            for i in range(self.instances)
        ]
        for thread in self._threads:
            thread.start()

    # --------------------------------------------------------------------- submitting
    def level_for(self, priority: int) -> int:
        return 1

    def submit(self, pending: Pending, timeout_us: int = 0, flags: SequenceFlags | None = None) -> None:
        """Queue a request of a sequence.

        Raises:
            InvalidInput: no sequence id, a sequence that was not started (or already ended), an id
                reused while its sequence is active, or a request of more than one row.
            ServerBusy: every sequence slot is taken, or too many requests are queued.
            Closed: the version is retiring (the core routes again).
        """
        flags = flags or SequenceFlags()
        seq_id = flags.id
        if seq_id == 0 or seq_id == "":
            raise InvalidInput(
                "a stateful model needs a sequence id on every request",
                model=self.model,
                expected="a non-zero sequence_id (uint64) or a non-empty string",
                got="none",
                hint="pass sequence_id=..., with sequence_start=True on the first request and sequence_end=True "
                "on the last (tritonclient: client.infer(model, inputs, sequence_id=1, sequence_start=True))",
            )
        if self.batched and pending.rows != 1:
            raise InvalidInput(
                "a request of a sequence must hold exactly one row (batch size 1), as Triton's sequence batcher "
                "requires",
                model=self.model,
                expected="batch size 1",
                got=pending.rows,
                hint="send each step of a sequence as its own request; several sequences batch together on the server",
            )
        if isinstance(seq_id, str) and self._corrid_numeric:
            raise InvalidInput(
                "a string sequence_id cannot fill this model's numeric CONTROL_SEQUENCE_CORRID input",
                model=self.model,
                expected="an integer sequence_id",
                got=repr(seq_id),
                hint="send integer sequence ids, or declare the CORRID control with data_type TYPE_STRING",
            )
        with self._lock:
            if self._closed:
                raise Closed()
            now = time.monotonic_ns()
            sequence = self._sequences.get(seq_id)
            if flags.start:
                if sequence is not None:
                    raise InvalidInput(
                        f"sequence {seq_id!r} is already active: its id cannot start a new sequence yet",
                        model=self.model,
                        expected="a sequence id that is not in use",
                        got=f"sequence_start=True for active sequence {seq_id!r} "
                        f"({sequence.steps} step(s) run{', its end is queued' if sequence.ending else ''})",
                        hint="end the running sequence first (sequence_end=True on its last request), wait until it "
                        f"is released after {self.idle_us} us without requests (max_sequence_idle_microseconds), "
                        "or pick a new id",
                    )
                if self._queued >= DEFAULT_MAX_QUEUE_SIZE:
                    raise self._queue_full()
                sequence = self._place(seq_id, now)
            else:
                if sequence is None:
                    reason = self._released.get(seq_id)
                    raise InvalidInput(
                        f"sequence {seq_id!r} has not been started" + (f": {reason}" if reason else ""),
                        model=self.model,
                        expected="sequence_start=True on the first request of a sequence",
                        got=f"a request for sequence {seq_id!r} without sequence_start",
                        hint="send sequence_start=True with the first request of the sequence (tritonclient: "
                        "client.infer(..., sequence_id=id, sequence_start=True))",
                    )
                if sequence.ending:
                    raise InvalidInput(
                        f"sequence {seq_id!r} is ending: its sequence_end request is already queued",
                        model=self.model,
                        expected="no request after the one with sequence_end=True",
                        got=f"another request for sequence {seq_id!r}",
                        hint="start a new sequence (a new id, or this id with sequence_start=True once it has ended)",
                    )
                if self._queued >= DEFAULT_MAX_QUEUE_SIZE:
                    raise self._queue_full()
            if flags.end:
                sequence.ending = True
            pending.enqueue_ns = now
            sequence.queue.append((pending, flags))
            sequence.last_ns = now
            self._queued += 1
            self._conds[sequence.instance].notify()

    def _queue_full(self) -> ServerBusy:
        return ServerBusy("the queue is full", model=self.model,
                          expected=f"at most {DEFAULT_MAX_QUEUE_SIZE} queued requests", got=self._queued,
                          hint="retry later or lower the request rate")

    def _place(self, seq_id: int | str, now: int) -> _Sequence:
        """A free slot on the instance with the most free slots (lock held); ServerBusy when full."""
        best, best_free = -1, 0
        for index, pool in enumerate(self._pools):
            free = pool.count(None)
            if free > best_free:
                best, best_free = index, free
        if best < 0:
            what = "max_candidate_sequences" if self.strategy == "oldest" else "max_batch_size"
            raise ServerBusy(
                "too many concurrent sequences: every sequence slot is taken",
                model=self.model,
                expected=f"at most {self.capacity} active sequences ({self.instances} instance(s) x "
                f"{self.per_instance} {'candidate sequence' if self.strategy == 'oldest' else 'slot'}(s))",
                got=f"a new sequence {seq_id!r} while {len(self._sequences)} are active",
                hint="end finished sequences with sequence_end=True, lower max_sequence_idle_microseconds so idle "
                f"ones are released sooner, or raise {what} or the instance count",
            )
        pool = self._pools[best]
        slot = pool.index(None)
        sequence = _Sequence(seq_id, best, slot, now, now)
        pool[slot] = sequence
        self._sequences[seq_id] = sequence
        self._released.pop(seq_id, None)
        self._counts["started"] += 1
        return sequence

    def _release(self, sequence: _Sequence, reason: str) -> None:
        """Free the sequence's slot and drop its state (lock held)."""
        if self._sequences.get(sequence.id) is not sequence:
            return
        del self._sequences[sequence.id]
        self._pools[sequence.instance][sequence.slot] = None
        self._released[sequence.id] = reason
        self._released.move_to_end(sequence.id)
        while len(self._released) > _RECENTLY_RELEASED:
            self._released.popitem(last=False)

    # --------------------------------------------------------------------- introspection
    @property
    def queue_depth(self) -> int:
        return self._queued

    @property
    def busy_instances(self) -> int:
        return self._busy

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    @property
    def active_sequences(self) -> int:
        return len(self._sequences)

    def sequence_stats(self) -> dict[str, Any]:
        """Counts for the statistics: active sequences, capacity, started/ended/idle-released totals."""
        with self._lock:
            return {"strategy": self.strategy, "active": len(self._sequences), "capacity": self.capacity,
                    "queued": self._queued, **self._counts}

    def sequences(self) -> list[dict[str, Any]]:
        """The active sequences: id, instance, slot, steps run, queued requests, seconds idle."""
        now = time.monotonic_ns()
        with self._lock:
            return [
                {"sequence_id": s.id, "instance": s.instance, "slot": s.slot, "steps": s.steps,
                 "queued": len(s.queue), "running": s.running, "idle_s": (now - s.last_ns) / 1e9}
                for s in self._sequences.values()
            ]

    def peek_state(self, sequence_id: int | str) -> dict[str, Any] | None:
        """A copy of an active sequence's state by input name (its initial state before the first
        step); None when the sequence is not active."""
        with self._lock:
            sequence = self._sequences.get(sequence_id)
            if sequence is None:
                return None
            stored = sequence.state
        out = {}
        for state in self.states:
            value = stored.get(state.input_name) if stored else None
            if value is None:
                out[state.input_name] = np.array(state.initial, copy=True)
            else:
                out[state.input_name] = _copy(value[0] if self.batched else value)
        return out

    # --------------------------------------------------------------------- instances
    def _instance_loop(self, instance: int) -> None:
        while True:
            steps = self._next_batch(instance)
            if steps is None:
                return
            self._busy += 1
            try:
                results = self._execute([step.pending for step in steps])
            finally:
                self._busy -= 1
            self._complete(instance, steps, results)

    def _next_batch(self, instance: int) -> list[_Step] | None:
        """Block until a batch of this instance's sequences is due; None at shutdown."""
        cond, pool = self._conds[instance], self._pools[instance]
        with self._lock:
            while True:
                now = time.monotonic_ns()
                ready = self._ready(pool, now)
                if not ready:
                    if self._closed:
                        return None
                    cond.wait(self._seconds_to_idle(pool, now))
                    continue
                if self.strategy == "direct":
                    ready.sort(key=lambda s: s.slot)
                    batch, _ = self._compatible(ready)
                    if self.min_ready and len(ready) < self.min_ready and not self._closed:
                        window_end = min(s.queue[0][0].enqueue_ns for s in ready) + self.delay_ns
                        if now < window_end:
                            cond.wait(self._wait_s(pool, now, window_end))
                            continue
                else:
                    ready.sort(key=lambda s: s.queue[0][0].enqueue_ns)
                    batch, can_grow = self._compatible(ready)
                    if can_grow and len(batch) < self.target and self.delay_ns and not self._closed:
                        window_end = batch[0].queue[0][0].enqueue_ns + self.delay_ns
                        if now < window_end:
                            cond.wait(self._wait_s(pool, now, window_end))
                            continue
                        batch = self._cut_preferred(batch)
                return [self._take(sequence) for sequence in batch]

    def _ready(self, pool: list[_Sequence | None], now: int) -> list[_Sequence]:
        """Sequences with a request to run (lock held); drops cancelled requests, releases idle ones."""
        ready = []
        for sequence in pool:
            if sequence is None or sequence.running:
                continue
            queue = sequence.queue
            while queue and queue[0][0].cancelled():
                # The caller gave up: drop it before it runs. A dropped end means the client may
                # still end the sequence with another request.
                _, flags = queue.popleft()
                self._queued -= 1
                if flags.end:
                    sequence.ending = False
            if queue:
                ready.append(sequence)
            elif now - sequence.last_ns >= self.idle_ns:
                self._release(sequence, f"it was released after {self.idle_us} us without requests "
                                        "(max_sequence_idle_microseconds)")
                self._counts["idle_released"] += 1
        return ready

    def _compatible(self, ready: list[_Sequence]) -> tuple[list[_Sequence], bool]:
        """The longest prefix that can share a batch (same shapes, at most max_batch_size rows)."""
        first = ready[0]
        key = self._batch_key(first)
        batch = [first]
        for sequence in ready[1:]:
            if len(batch) >= self.max_rows or self._batch_key(sequence) != key:
                return batch, False
            batch.append(sequence)
        return batch, len(batch) < self.max_rows

    def _batch_key(self, sequence: _Sequence) -> tuple[Any, ...]:
        pending = sequence.queue[0][0]
        if not self.states or not any(-1 in s.dims for s in self.states):
            return pending.shape_key
        # Variable-size states: only sequences whose states have the same shape can be merged.
        shapes = tuple(tuple(getattr(self._state_value(sequence, s), "shape", ())) for s in self.states)
        return pending.shape_key, shapes

    def _cut_preferred(self, batch: list[_Sequence]) -> list[_Sequence]:
        sizes = [p for p in self.preferred if p <= len(batch)]
        return batch[: sizes[-1]] if sizes else batch

    def _seconds_to_idle(self, pool: list[_Sequence | None], now: int) -> float | None:
        deadlines = [s.last_ns + self.idle_ns for s in pool if s is not None and not s.queue and not s.running]
        return max(min(deadlines) - now, 0) / 1e9 if deadlines else None

    def _wait_s(self, pool: list[_Sequence | None], now: int, window_end: int) -> float:
        idle = self._seconds_to_idle(pool, now)
        window = (window_end - now) / 1e9
        return min(window, idle) if idle is not None else window

    def _state_value(self, sequence: _Sequence, state: _State) -> Any:
        stored = sequence.state.get(state.input_name) if sequence.state else None
        if stored is not None:
            return stored
        return state.initial[None] if self.batched else state.initial

    def _take(self, sequence: _Sequence) -> _Step:
        """Pop the sequence's next request and add its control and state inputs (lock held)."""
        pending, flags = sequence.queue.popleft()
        self._queued -= 1
        sequence.running = True
        inputs = dict(pending.inputs)  # never write into the caller's dict
        for control in self.controls:
            inputs[control.name] = control.tensor(flags, self.batched)
        for state in self.states:
            inputs[state.input_name] = self._state_value(sequence, state)
        pending.inputs = inputs
        wanted = list(pending.outputs) if pending.outputs else list(self.outputs)
        extra = [s.output_name for s in self.states if s.output_name not in wanted]
        pending.outputs = wanted + extra
        return _Step(sequence, pending, flags, wanted)

    def _complete(self, instance: int, steps: list[_Step], results: list[tuple[Pending, Any, BaseException | None]]) -> None:
        by_pending = {id(step.pending): step for step in steps}
        final: list[tuple[Pending, Any, BaseException | None]] = []
        with self._lock:
            now = time.monotonic_ns()
            for pending, result, error in results:
                step = by_pending[id(pending)]
                sequence = step.sequence
                sequence.running = False
                sequence.last_ns = now
                sequence.steps += 1
                if error is None:
                    try:
                        sequence.state = self._new_state(result)
                        result = {name: result[name] for name in step.wanted}
                    except InferenceError as exc:
                        result, error = None, exc
                if step.flags.end:
                    self._release(sequence, "it already ended (its last request had sequence_end=True)")
                    self._counts["ended"] += 1
                final.append((pending, result, error))
            self._conds[instance].notify()
        resolve_all(final)

    def _new_state(self, result: Mapping[str, Any]) -> dict[str, Any]:
        new = {}
        for state in self.states:
            value = result.get(state.output_name)
            shape = list(getattr(value, "shape", ()))
            item = shape[1:] if self.batched else shape
            if value is None or not shape_matches(state.dims, item):
                raise InferenceError(
                    f"the model's output state '{state.output_name}' is missing or has the wrong shape",
                    model=self.model,
                    tensor=state.output_name,
                    expected=f"{state.wire} {([-1] if self.batched else []) + state.dims}",
                    got="no such output" if value is None else shape,
                    hint=f"return the new state as output '{state.output_name}' (one row per request)",
                )
            new[state.input_name] = _copy(value)
        return new

    # --------------------------------------------------------------------- shutdown
    def close(self, *, drain: bool = True, timeout_s: float = 10.0) -> None:
        """Stop accepting; run what is queued (``drain``) or reject it; join the instance threads."""
        rejected: list[tuple[Pending, Any, BaseException | None]] = []
        with self._lock:
            self._closed = True
            if not drain:
                for sequence in self._sequences.values():
                    while sequence.queue:
                        pending, _ = sequence.queue.popleft()
                        rejected.append((pending, None, ModelNotReady(
                            "the model was unloaded before this request ran", model=self.model,
                            hint="start the sequence again once the model is loaded",
                        )))
                self._queued = 0
            for cond in self._conds:
                cond.notify_all()
        if rejected:
            resolve_all(rejected)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0))

    def checked(self, runner: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        """Wrap a runner so that a missing state output fails with a message naming it."""
        names = [s.output_name for s in self.states]
        if not names:
            return runner

        def run(inputs: dict[str, Any]) -> Any:
            outputs = runner(inputs)
            if isinstance(outputs, Mapping):
                missing = [n for n in names if n not in outputs]
                if missing:
                    raise InferenceError(
                        f"the model did not return its output state {', '.join(repr(m) for m in missing)}",
                        model=self.model,
                        expected=f"outputs including {names}",
                        got=sorted(outputs),
                        hint="return the new state of every sequence_batching state under its output_name",
                    )
            return outputs

        return run
