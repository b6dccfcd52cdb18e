"""gRPC load on grpc's C core: the load generator's fast path for ``protocol="grpc"``.

Why this exists: with ``grpc.aio`` every answer crosses from grpc's poller thread to the event loop
and the next request goes back, two thread hops and a few coroutine steps per request. Measured here
against the real Triton that is about 95-105 us of client CPU per request, against about 65 us for
perf_analyzer (C++), which on a 2-core machine is the difference between measuring the server and
measuring the client. This host drives the objects grpc's own synchronous channel is built on
(``grpc._cython.cygrpc``: ``Channel.integrated_call`` with the six operations of a unary call in one
batch, and ``Channel.next_call_event``), the way nbserve's gRPC server engine does on the server
side: one thread waits on the channel's completion queue and, in the closed loop, starts each
slot's next call itself, so a request costs one completion and no hop (about 60-75 us here).

Connections: as perf_analyzer's client does (tritonclient shares a channel among at most 6 contexts),
every 6 concurrent slots get another channel, hence another HTTP/2 connection and polling thread,
up to 4 (the open loop uses 4). On one connection a server reads requests one after another:
measured against Triton at concurrency 16, one connection gave dynamic batches of 3.4-4.1 requests
and 4,800-5,000 infer/s, three gave 5.3-5.4 and 5,600-6,700 (perf_analyzer in the same minutes:
6.5-6.8 and 5,400-5,600). At concurrency 64, eleven connections (eleven Python polling threads)
were slower than three or four (batches of 19 against 24-28; perf_analyzer's 24.5).

The host has the blocking interface of :class:`~nbserve.bench._engine.EngineHost` (``start``,
``take``, ``halt``, ``close``) and the same invariants: every call started is counted once in
``sent`` and ends once, in ``ok`` or ``failed``. ``cygrpc`` is grpc's private layer: :func:`available`
checks the pieces used here, and the generator falls back to the ``grpc.aio`` transport without them.
"""

from __future__ import annotations

import collections
import threading
import time
from array import array
from typing import Any

import numpy as np

from ._engine import Load, Records, arrival_gaps_ns
from ._transports import TransportSpec

__all__ = ["available", "CoreGrpcHost"]

_METHOD = b"/inference.GRPCInferenceService/ModelInfer"
_MAX_MESSAGE = 64 * 2**20
_MAX_MESSAGES = 20
SLOTS_PER_CHANNEL = 6  # tritonclient's sharing limit, which perf_analyzer inherits
MAX_CHANNELS = 4  # each has a polling thread; more of them contend for the GIL (and got slower)

_OPERATIONS = ("SendInitialMetadataOperation", "SendMessageOperation", "SendCloseFromClientOperation",
               "ReceiveInitialMetadataOperation", "ReceiveMessageOperation", "ReceiveStatusOnClientOperation")


def available() -> bool:
    """True when grpc's C-core layer has everything this host uses."""
    try:
        from grpc._cython import cygrpc
    except ImportError:
        return False
    names = (*_OPERATIONS, "Channel", "CompletionType", "StatusCode", "OperationType", "PropagationConstants",
             "build_census_context")
    if not all(hasattr(cygrpc, name) for name in names):
        return False
    return all(hasattr(cygrpc.Channel, m) for m in ("integrated_call", "next_call_event", "close"))


class _Lane:
    """One channel (one connection), its calls in flight and the thread that polls it."""

    def __init__(self, channel: Any, handle: tuple[Any, ...]) -> None:
        self.channel = channel
        self.handle = handle
        self.inflight: dict[int, tuple[int, Any]] = {}  # tag -> (start ns, call)
        self.poller: threading.Thread | None = None


class CoreGrpcHost:
    """Closed- and open-loop gRPC load on C-core channels (see module docstring)."""

    def __init__(self, spec: TransportSpec) -> None:
        from grpc import _common
        from grpc._cython import cygrpc

        self._cygrpc = cygrpc
        self._code_names = {code: status.name for code, status in _common.CYGRPC_STATUS_CODE_TO_STATUS_CODE.items()}
        self._address = spec.address.encode()
        self._context = cygrpc.build_census_context()
        self._flags = cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS
        self._ok_code = cygrpc.StatusCode.ok
        self._requests = spec.payloads
        self._metadata = (("authorization", f"Bearer {spec.token}"),) if spec.token else ()
        self._timeout_s = spec.timeout_s
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._ok = array("q")
        self._failed = array("q")
        self._messages: collections.Counter[str] = collections.Counter()
        self._sent = self._dropped = 0
        self._index = self._next_tag = 0
        self._inflight = 0  # over every lane
        self._lanes: list[_Lane] = []
        self._closed_loop = False
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._closed = False
        self._lane(0)  # connect now: a wrong address fails at the first call, not at set-up

    @property
    def threads(self) -> list[threading.Thread]:
        return [t for t in (*(lane.poller for lane in self._lanes), self._scheduler) if t is not None]

    def _lane(self, index: int) -> _Lane:
        while len(self._lanes) <= index:
            options = (("grpc.max_send_message_length", _MAX_MESSAGE),
                       ("grpc.max_receive_message_length", _MAX_MESSAGE),
                       ("grpc.use_local_subchannel_pool", 1),  # its own connection, not a shared one
                       # Never retry: a retried call is two requests to the server and one in our
                       # counts. It is also cheaper: 52-54 instead of 60 us of CPU per call here.
                       ("grpc.enable_retries", 0))
            channel = self._cygrpc.Channel(self._address, options, None)
            # grpcio >= 1.63 takes a registered-method handle (it skips a method lookup per call).
            handle = (channel.get_registered_call_handle(_METHOD),) if hasattr(
                channel, "get_registered_call_handle") else ()
            self._lanes.append(_Lane(channel, handle))
        return self._lanes[index]

    # --------------------------------------------------------------------- calls (lock held)
    def _issue(self, lane: _Lane) -> None:
        cygrpc = self._cygrpc
        tag = self._next_tag
        self._next_tag += 1
        request = self._requests[self._index % len(self._requests)]
        self._index += 1
        operations = (
            cygrpc.SendInitialMetadataOperation(self._metadata, 0),
            cygrpc.SendMessageOperation(request, 0),
            cygrpc.SendCloseFromClientOperation(0),
            cygrpc.ReceiveInitialMetadataOperation(0),
            cygrpc.ReceiveMessageOperation(0),
            cygrpc.ReceiveStatusOnClientOperation(0),
        )
        deadline = time.time() + self._timeout_s if self._timeout_s else None  # grpc's deadlines are wall time
        started = time.monotonic_ns()
        call = lane.channel.integrated_call(self._flags, _METHOD, None, deadline, self._metadata, None,
                                            ((operations, tag),), self._context, *lane.handle)
        lane.inflight[tag] = (started, call)
        self._inflight += 1
        self._sent += 1
        if lane.poller is None:
            # Like grpc's own channel: a lane's polling thread lives while it has calls in flight.
            lane.poller = threading.Thread(target=self._poll, args=(lane,), name="nbserve-bench-grpc", daemon=True)
            lane.poller.start()

    def _outcome(self, event: Any) -> str | None:
        """None for a successful call, else what went wrong."""
        # The batch's operations come back in the order they were given: the status is the last.
        status = event.batch_operations[-1]
        code = status.code()
        if code == self._ok_code:
            return None if event.success else "the call's batch failed"
        return f"{self._code_names.get(code, code)}: {status.details()}"

    def _poll(self, lane: _Lane) -> None:
        channel, timeout = lane.channel, self._cygrpc.CompletionType.queue_timeout
        while True:
            event = channel.next_call_event()
            if event.completion_type == timeout:
                continue
            ended = time.monotonic_ns()
            problem = self._outcome(event)
            with self._lock:
                started, _ = lane.inflight.pop(event.tag, (ended, None))
                self._inflight -= 1
                if problem is None:
                    self._ok.extend((started, ended))
                else:
                    self._failed.extend((started, ended))
                    if problem in self._messages or len(self._messages) < _MAX_MESSAGES:
                        self._messages[problem] += 1
                if self._closed_loop and not self._stopping.is_set():
                    self._issue(lane)  # this slot's next request, from this thread: no hop
                if not lane.inflight:
                    lane.poller = None
                    self._idle.notify_all()
                    return

    # --------------------------------------------------------------------- open loop
    def _schedule(self, load: Load) -> None:
        gaps = arrival_gaps_ns(load)
        due = float(time.monotonic_ns())
        turn = 0
        while not self._stopping.is_set():
            now = time.monotonic_ns()
            while due <= now:  # late wake-ups send what was due: the mean rate is the one asked for
                with self._lock:
                    if self._inflight >= load.max_outstanding:
                        self._dropped += 1
                    else:
                        self._issue(self._lane(turn % MAX_CHANNELS))
                        turn += 1
                due += next(gaps)
            self._stopping.wait(max(due - time.monotonic_ns(), 0) / 1e9)

    # --------------------------------------------------------------------- interface
    def start(self, load: Load) -> None:
        if self._closed:
            raise RuntimeError("the generator is closed")
        self._stopping.clear()
        if load.mode == "concurrency":
            concurrency = int(load.value)
            lanes = min(MAX_CHANNELS, -(-concurrency // SLOTS_PER_CHANNEL))
            with self._lock:
                self._closed_loop = True
                for slot in range(concurrency):  # a slot stays on its lane: _poll reissues there
                    self._issue(self._lane(slot % lanes))
        else:
            self._closed_loop = False
            self._scheduler = threading.Thread(target=self._schedule, args=(load,), daemon=True,
                                               name="nbserve-bench-grpc-schedule")
            self._scheduler.start()

    def take(self) -> Records:
        with self._lock:
            ok, self._ok = self._ok, array("q")
            failed, self._failed = self._failed, array("q")
            messages, self._messages = dict(self._messages), collections.Counter()
            sent, self._sent = self._sent, 0
            dropped, self._dropped = self._dropped, 0
        return Records(np.frombuffer(ok, np.int64).reshape(-1, 2).copy(),
                       np.frombuffer(failed, np.int64).reshape(-1, 2).copy(), sent, dropped, messages)

    def halt(self, timeout_s: float = 10.0) -> Records:
        """Stop starting calls; wait up to ``timeout_s`` for those in flight, then cancel them."""
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout_s)
            self._scheduler = None
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(max(deadline - time.monotonic(), 0))
            if self._inflight:  # a server that never answers: cancelled calls end as failures
                for lane in self._lanes:
                    for _, call in lane.inflight.values():
                        call.cancel(self._cygrpc.StatusCode.cancelled, "cancelled: no answer before the run stopped")
                final = time.monotonic() + 10
                while self._inflight and time.monotonic() < final:
                    self._idle.wait(max(final - time.monotonic(), 0))
        return self.take()

    def close(self) -> None:
        """Halt and close the channels. Idempotent."""
        if self._closed:
            return
        self.halt(5.0)
        self._closed = True
        for lane in self._lanes:
            if lane.poller is not None:
                lane.poller.join(5)
            lane.channel.close(self._cygrpc.StatusCode.cancelled, "the benchmark is over")
