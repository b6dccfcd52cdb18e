"""A gRPC server engine on grpc's C core, without grpc.aio's per-call machinery.

Why this exists: on a 2-core machine a grpc.aio server that answers every ModelInfer with a
constant, prebuilt response spends about 250 us of CPU per request (3,000-4,000 calls/s), which
is already below half of Triton's throughput before any model runs. The time is not in protobuf
or the servicer: each grpc.aio call creates several coroutines and tasks and crosses from grpc's
poller thread to the event loop once per completion-queue event (four per unary call, each a
socket write and a loop wake-up; see ``PollerCompletionQueue`` in grpc's Cython sources).

This engine drives the same C-core objects that grpc's own synchronous server uses
(``grpc._cython.cygrpc``: ``Server``, ``CompletionQueue``, ``Call.start_server_batch`` and the
``*Operation`` classes). One thread polls the completion queue; per unary call it does two batches
(receive the message; send metadata + message + status and wait for close). Handlers are the
servicer's own ``async def`` methods, found through the generated
``add_GRPCInferenceServiceServicer_to_server`` (the stub is the single source of method names,
serializers and deserializers), and run as tasks on the event loop, reached with one hop that
several calls arriving together share. A method may also have a *direct* handler that runs on the
polling thread and answers from any thread (ModelInfer: see ``grpc.make_direct_infer``), which
saves the hop and the task. Bidirectional streams (ModelStreamInfer) are served too. The same
constant-response experiment runs at about 10,000 calls/s.

Threads and locks: the polling thread owns the completion queue; answers are started from the loop
(or wherever a direct handler's result arrives), which the C core allows. A batch of direct answers
goes to the answer thread (:meth:`NativeServer.answer`): starting a call's final batch writes to
its socket on the calling thread and hands the GIL over twice, and 64 of those in a row kept the
model's instance thread from forming its next batch (gRPC at concurrency 16/64 served 1.3x the
requests per second with the hand-off, on the 2-core reference machine); server-level calls
(request_call, shutdown, cancel_all_calls, destroy) go through one lock, because the C core
forbids request_call once shutdown began and cygrpc checks that before releasing the GIL.

``cygrpc`` is grpc's private layer; :func:`available` checks that the pieces used here exist, and
the frontend falls back to grpc.aio when they do not.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

_LOGGER = logging.getLogger("nbserve.grpc")

__all__ = ["available", "NativeServer", "HandlerCollector", "AbortRpc"]

_NEW_CALL = "nbserve-new-call"
_SHUTDOWN = "nbserve-shutdown"
_FINAL = "nbserve-final-batch"  # the last batch of a unary call: its answer is on the wire
# Outstanding request_call()s: the core hands each new call to one of them, so a few in reserve
# let a burst of new calls start without waiting for the polling thread to ask again.
_REQUESTS_IN_RESERVE = 8

_REQUIRED = (
    "Server",
    "CompletionQueue",
    "CompletionType",
    "StatusCode",
    "SendInitialMetadataOperation",
    "SendMessageOperation",
    "SendStatusFromServerOperation",
    "ReceiveMessageOperation",
    "ReceiveCloseOnServerOperation",
)


def available() -> bool:
    """True when grpc's C-core layer has everything this engine uses."""
    try:
        from grpc._cython import cygrpc
    except ImportError:
        return False
    if not all(hasattr(cygrpc, name) for name in _REQUIRED):
        return False
    return all(
        hasattr(cygrpc.Server, method) for method in ("request_call", "shutdown", "cancel_all_calls", "start")
    ) and hasattr(cygrpc.CompletionType, "queue_shutdown")


class AbortRpc(Exception):
    """Raised by :meth:`Context.abort`: ends the call with ``code`` and ``details``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class HandlerCollector:
    """Stands in for a grpc server in ``add_<Service>Servicer_to_server``: keeps the handler table."""

    def __init__(self) -> None:
        self.handlers: dict[bytes, grpc.RpcMethodHandler] = {}

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        for method, handler in handlers.items():
            self.handlers[f"/{service}/{method}".encode()] = handler

    def add_generic_rpc_handlers(self, generic_handlers: Iterable[Any]) -> None:
        # Older generated stubs register only a generic handler; it exposes its table as _method_handlers.
        for generic in generic_handlers:
            table = getattr(generic, "_method_handlers", None)
            if table:
                for path, handler in table.items():
                    self.handlers.setdefault(path.encode() if isinstance(path, str) else path, handler)


class _Call:
    """One unary call, from its arrival to its final batch.

    ``ok(body)`` and ``fail(code, details)`` answer it from any thread (direct handlers answer from
    wherever their result arrives, e.g. a model's instance thread); each call is answered once.
    """

    __slots__ = ("call", "handler", "metadata", "deadline", "payload", "server", "direct")

    def __init__(self, server: NativeServer, call: Any, handler: grpc.RpcMethodHandler, metadata: Any,
                 deadline: float | None, direct: Callable[..., bool] | None) -> None:
        self.server = server
        self.call = call
        self.handler = handler
        self.metadata = metadata
        self.deadline = deadline
        self.direct = direct
        self.payload: bytes | None = None

    def ok(self, body: bytes, trailing_metadata: tuple = ()) -> None:
        server = self.server
        server._final(self, (
            server._op_initial((), 0),
            server._op_message(body, 0),
            server._op_status(trailing_metadata, server._ok, "", 0),
            server._op_close(0),
        ))

    def fail(self, code: Any, details: str, trailing_metadata: tuple = ()) -> None:
        server = self.server
        server._final(self, (
            server._op_initial((), 0),
            server._op_status(trailing_metadata, _status_number(code), details, 0),
            server._op_close(0),
        ))


class _Stream:
    """One bidirectional streaming call (``stream_stream`` handlers, e.g. ModelStreamInfer).

    The polling thread keeps one receive outstanding and hands each message to the loop; the loop
    runs the handler's async generator and writes its responses one at a time (gRPC allows one
    send in flight per call), each write completing through the polling thread.
    """

    __slots__ = ("call", "handler", "metadata", "deadline", "inbox", "write_done", "metadata_sent")

    def __init__(self, call: Any, handler: grpc.RpcMethodHandler, metadata: Any, deadline: float | None) -> None:
        self.call = call
        self.handler = handler
        self.metadata = metadata
        self.deadline = deadline
        self.inbox: asyncio.Queue | None = None  # created on the loop
        self.write_done: asyncio.Future | None = None
        self.metadata_sent = False


class _StreamTag:
    """Completion tag of a stream's receive (``reading=True``) or send batch."""

    __slots__ = ("stream", "reading")

    def __init__(self, stream: _Stream, reading: bool) -> None:
        self.stream = stream
        self.reading = reading


_END_OF_STREAM = object()


class Context:
    """The part of ``grpc.aio.ServicerContext`` that nbserve's servicer uses."""

    __slots__ = ("_rpc", "trailing_metadata")

    def __init__(self, rpc: _Call | _Stream) -> None:
        self._rpc = rpc
        self.trailing_metadata: tuple = ()

    def invocation_metadata(self) -> tuple:
        return self._rpc.metadata

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        if trailing_metadata:
            self.trailing_metadata = tuple(trailing_metadata)
        raise AbortRpc(code, details)

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self.trailing_metadata = tuple(metadata)

    def time_remaining(self) -> float | None:
        deadline = self._rpc.deadline
        if deadline is None or deadline == float("inf"):
            return None
        return max(deadline - time.time(), 0.0)  # the core's deadlines are wall-clock times


class NativeServer:
    """Serves unary RPCs from a handler table on ``loop``; see the module docstring.

    Args:
        handlers: method path (``b"/package.Service/Method"``) -> ``grpc.RpcMethodHandler`` whose
            ``unary_unary`` is an ``async def (request, context)``.
        direct: optional method path -> ``fn(payload: bytes, metadata, call) -> bool`` run on the
            polling thread as soon as a call's message arrives, for methods that need no event loop
            (ModelInfer submits to the batcher from there). It answers with ``call.ok(body)`` or
            ``call.fail(code, details)`` from any thread, now or later, and returns True; returning
            False sends the call to its ``handlers`` entry on the loop instead.
        loop: the event loop the handlers run on.
        options: grpc channel arguments (``("grpc.max_receive_message_length", n)``...).

    ``stream_stream`` handlers (an async generator over an async iterator of requests) are served
    too; unary-stream and stream-unary methods answer UNIMPLEMENTED (the service has none).
    """

    def __init__(self, handlers: Mapping[bytes, grpc.RpcMethodHandler], loop: asyncio.AbstractEventLoop,
                 options: Iterable[tuple[str, Any]] = (),
                 direct: Mapping[bytes, Callable[..., bool]] | None = None) -> None:
        from grpc._cython import cygrpc

        self._cygrpc = cygrpc
        self._handlers = dict(handlers)
        self._direct = dict(direct or {})
        self._loop = loop
        self._cq = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(tuple(options), False)
        self._server.register_completion_queue(self._cq)
        self._pending: collections.deque[_Call] = collections.deque()
        self._wake_scheduled = False
        self._tasks: set[asyncio.Task] = set()  # unary handlers running on the loop
        self._streams: set[asyncio.Task] = set()
        # Unary calls from the arrival of their message until their answer is on the wire (their final
        # batch completed): stop() waits for this to reach zero before it cancels what is left.
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._drained: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._destroyed = False
        self._stopped: asyncio.Future | None = None  # resolved by the polling thread as it exits
        # The C core forbids request_call after shutdown began and any call on a destroyed server;
        # the checks in cygrpc run before it releases the GIL, so two threads can still interleave
        # there. Every server-level call goes through this lock.
        self._server_lock = threading.Lock()
        self._ok = cygrpc.StatusCode.ok
        self._op_initial = cygrpc.SendInitialMetadataOperation
        self._op_message = cygrpc.SendMessageOperation
        self._op_status = cygrpc.SendStatusFromServerOperation
        self._op_close = cygrpc.ReceiveCloseOnServerOperation
        # Batches of answers for the answer thread, and how many of them are queued or being sent.
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._answers_queued = 0
        self._answers_lock = threading.Lock()
        self._answer_thread: threading.Thread | None = None

    def add_insecure_port(self, address: str) -> int:
        """Bind ``host:port`` (port 0 picks a free one); returns the bound port, 0 on failure."""
        return self._server.add_http2_port(address.encode())

    def start(self) -> None:
        self._server.start()
        for _ in range(_REQUESTS_IN_RESERVE):
            self._server.request_call(self._cq, self._cq, _NEW_CALL)
        self._thread = threading.Thread(target=self._poll, name="nbserve-grpc-poll", daemon=True)
        self._thread.start()
        self._answer_thread = threading.Thread(target=self._send_answers, name="nbserve-grpc-answer", daemon=True)
        self._answer_thread.start()

    async def stop(self, grace_s: float | None) -> None:
        """Stop accepting calls, let in-flight unary calls finish (at most ``grace_s``), end open
        streams, release the port."""
        if self._thread is None or self._stopping:
            return
        loop = self._loop
        deadline = None if grace_s is None else loop.time() + grace_s
        self._stopped = loop.create_future()
        self._drained = asyncio.Event()
        with self._server_lock:
            self._stopping = True
            self._server.shutdown(self._cq, _SHUTDOWN)
        self._check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout=_remaining(loop, deadline))
        except asyncio.TimeoutError:
            pass
        # Open streams, and calls still running after the grace period, end here.
        with self._server_lock:
            if not self._destroyed:
                self._server.cancel_all_calls()
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout=10.0)
        except asyncio.TimeoutError:
            _LOGGER.warning("the gRPC server did not shut down within 10 s")
        for task in list(self._tasks) + list(self._streams):
            task.cancel()
        self._thread.join(timeout=1.0)
        self._stop_answering()

    # ------------------------------------------------------------------ the answer thread
    def answer(self, send: Callable[[list], None], answers: list) -> None:
        """Run ``send(answers)`` (send one batch's encoded answers) on the answer thread.

        A lone answer with nothing queued is sent at once on the calling thread: the hop would add
        a thread wake-up to every call at concurrency 1, and with nothing queued no answer can
        overtake another. Otherwise batches are sent in the order they came.
        """
        with self._answers_lock:
            now = self._answer_thread is None or (len(answers) == 1 and self._answers_queued == 0)
            if not now:
                self._answers_queued += 1
        if now:
            send(answers)
        else:
            self._answers.put((send, answers))

    def _send_answers(self) -> None:
        answers = self._answers
        while (work := answers.get()) is not None:
            send, batch = work
            try:
                send(batch)
            except Exception:  # pragma: no cover - each answer catches its own errors; stay alive
                _LOGGER.exception("could not send gRPC answers")
            finally:
                with self._answers_lock:
                    self._answers_queued -= 1

    def _stop_answering(self) -> None:
        """End the answer thread after what it has queued; later answers are sent by their callers."""
        thread = self._answer_thread
        if thread is None:
            return
        with self._answers_lock:
            self._answer_thread = None
        self._answers.put(None)
        thread.join(timeout=5.0)

    def _check_drained(self) -> None:
        if self._drained is not None and self._inflight <= 0:
            self._drained.set()

    def _final(self, rpc: _Call, ops: tuple) -> None:
        """Start a unary call's last batch; its completion ends the call's time in flight."""
        try:
            rpc.call.start_server_batch(ops, _FINAL)
        except Exception:  # the call is gone (server stopped): nothing to answer
            _LOGGER.debug("could not answer a gRPC call", exc_info=True)
            self._call_ended()

    def _call_ended(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1
            idle = self._inflight <= 0
        if idle and self._stopping:
            self._call_soon(self._check_drained)

    # ------------------------------------------------------------------ the polling thread
    def _poll(self) -> None:
        cq = self._cq
        server = self._server
        queue_shutdown = self._cygrpc.CompletionType.queue_shutdown
        pending = self._pending
        handlers = self._handlers
        # A new operation object per batch: each holds its own C buffers (sharing one across calls
        # frees the same received message twice).
        receive = self._cygrpc.ReceiveMessageOperation
        try:
            while True:
                event = cq.poll()
                tag = event.tag
                if tag is None:
                    if event.completion_type == queue_shutdown:
                        return
                    continue  # a stream ended or a call was refused: nothing left to do
                if tag is _FINAL:
                    self._call_ended()
                    continue
                if type(tag) is _Call:
                    with self._inflight_lock:
                        self._inflight += 1
                    payload = event.batch_operations[0].message() if event.success else None
                    if payload is not None and tag.direct is not None and self._run_direct(tag, payload):
                        continue
                    tag.payload = payload
                    pending.append(tag)
                    if not self._wake_scheduled:
                        self._wake_scheduled = True
                        self._wake()
                elif type(tag) is _StreamTag:
                    self._stream_event(tag, event, receive)
                elif tag is _NEW_CALL:
                    if not event.success:  # the server is shutting down
                        continue
                    with self._server_lock:
                        if not self._stopping:
                            server.request_call(cq, cq, _NEW_CALL)
                    details = event.call_details
                    handler = handlers.get(details.method)
                    if handler is None or handler.request_streaming != handler.response_streaming:
                        self._reject(event.call, details.method, handler)
                    elif handler.request_streaming:
                        stream = _Stream(event.call, handler, event.invocation_metadata, details.deadline)
                        self._call_soon(self._start_stream, stream)
                    else:
                        call = _Call(self, event.call, handler, event.invocation_metadata, details.deadline,
                                     self._direct.get(details.method))
                        call.call.start_server_batch((receive(0),), call)
                elif tag is _SHUTDOWN:  # every call has finished
                    with self._server_lock:
                        self._destroyed = True
                        server.destroy()
                    cq.shutdown()
        except Exception:  # pragma: no cover - a bug here would hang every client; make it loud
            _LOGGER.exception("the gRPC polling thread failed")
        finally:
            self._signal_stopped()

    def _run_direct(self, rpc: _Call, payload: bytes) -> bool:
        try:
            return rpc.direct(payload, rpc.metadata, rpc)
        except Exception as exc:  # a bug in the direct handler: answer, never leave the call hanging
            _LOGGER.error("unexpected %s in a direct gRPC handler", type(exc).__name__, exc_info=exc)
            rpc.fail(self._cygrpc.StatusCode.unknown, f"Unexpected {type(exc).__name__}: {exc}")
            return True

    def _signal_stopped(self) -> None:
        done = self._stopped
        if done is None:
            return
        try:
            self._loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
        except RuntimeError:  # the loop is closed; stop() is not waiting any more
            pass

    def _stream_event(self, tag: _StreamTag, event: Any, receive: Callable[[int], Any]) -> None:
        stream = tag.stream
        if tag.reading:
            message = event.batch_operations[0].message() if event.success else None
            if message is None:  # the client closed its side (or went away)
                self._call_soon(_feed, stream, _END_OF_STREAM)
                return
            self._call_soon(_feed, stream, message)
            stream.call.start_server_batch((receive(0),), tag)
        else:
            self._call_soon(_resolve, stream.write_done, bool(event.success))

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed: the server is going away with it
            pass

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed: the server is going away with it
            self._wake_scheduled = False

    def _reject(self, call: Any, method: bytes, handler: Any) -> None:
        cygrpc = self._cygrpc
        if handler is None:
            code, details = cygrpc.StatusCode.unimplemented, f"Method not found: {method.decode(errors='replace')}"
        else:
            code = cygrpc.StatusCode.unimplemented
            details = f"{method.decode(errors='replace')} streams in one direction only, which this server does not offer"
        call.start_server_batch(
            (self._op_initial((), 0), self._op_status((), code, details, 0), self._op_close(0)), None
        )

    # ------------------------------------------------------------------ the event loop
    def _drain(self) -> None:
        # Clear the flag before draining: a call queued after this line schedules another drain,
        # so none is left behind (deque appends/pops are atomic under the GIL).
        self._wake_scheduled = False
        pending = self._pending
        while pending:
            self._dispatch(pending.popleft())

    def _dispatch(self, rpc: _Call) -> None:
        if rpc.payload is None:  # the client went away before its message arrived
            self._send_status(rpc, self._cygrpc.StatusCode.cancelled, "the client cancelled the call")
            return
        handler = rpc.handler
        try:
            request = handler.request_deserializer(rpc.payload) if handler.request_deserializer else rpc.payload
        except Exception as exc:
            self._send_status(rpc, self._cygrpc.StatusCode.invalid_argument,
                              f"the request is not a valid {_message_name(handler)} message ({exc}): "
                              "send it with tritonclient.grpc or the generated stub")
            return
        rpc.payload = None
        context = Context(rpc)
        try:
            coro = handler.unary_unary(request, context)
        except Exception as exc:  # a synchronous handler that raised
            self._finish_error(rpc, context, exc)
            return
        if not asyncio.iscoroutine(coro):  # a synchronous handler: it already answered
            self._send_response(rpc, context, coro)
            return
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finish(rpc, context, done))

    def _finish(self, rpc: _Call, context: Context, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            self._send_status(rpc, self._cygrpc.StatusCode.unavailable, "the server stopped before answering")
            return
        exc = task.exception()
        if exc is None:
            self._send_response(rpc, context, task.result())
        else:
            self._finish_error(rpc, context, exc)

    def _finish_error(self, rpc: _Call, context: Context, exc: BaseException) -> None:
        if isinstance(exc, AbortRpc):
            code = _status_number(exc.code)
            details = exc.details
        else:
            _LOGGER.error("unexpected %s in a gRPC handler", type(exc).__name__, exc_info=exc)
            code, details = self._cygrpc.StatusCode.unknown, f"Unexpected {type(exc).__name__}: {exc}"
        self._send_status(rpc, code, details, context.trailing_metadata)

    def _send_response(self, rpc: _Call, context: Context, response: Any) -> None:
        serializer = rpc.handler.response_serializer
        try:
            body = serializer(response) if serializer else response
        except Exception as exc:
            rpc.fail(self._cygrpc.StatusCode.internal, f"could not serialize the response: {exc}")
            return
        rpc.ok(body, context.trailing_metadata)

    def _send_status(self, rpc: _Call, code: int, details: str, trailing: tuple = ()) -> None:
        rpc.fail(code, details, trailing)

    # ------------------------------------------------------------------ streams (on the loop)
    def _start_stream(self, stream: _Stream) -> None:
        stream.inbox = asyncio.Queue()
        # The first receive starts only now, so no message can arrive before the inbox exists.
        stream.call.start_server_batch((self._cygrpc.ReceiveMessageOperation(0),), _StreamTag(stream, True))
        task = self._loop.create_task(self._run_stream(stream))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _run_stream(self, stream: _Stream) -> None:
        handler = stream.handler
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        context = Context(stream)

        async def requests():
            while True:
                item = await stream.inbox.get()
                if item is _END_OF_STREAM:
                    return
                yield deserialize(item) if deserialize else item

        code, details = self._ok, ""
        try:
            responses = handler.stream_stream(requests(), context)
            async for response in responses:
                if not await self._write(stream, serialize(response) if serialize else response):
                    return  # the client is gone: nobody to send a status to
        except AbortRpc as exc:
            code, details = _status_number(exc.code), exc.details
        except asyncio.CancelledError:
            code, details = self._cygrpc.StatusCode.unavailable, "the server stopped before the stream ended"
        except Exception as exc:
            _LOGGER.error("unexpected %s in a gRPC stream handler", type(exc).__name__, exc_info=exc)
            code, details = self._cygrpc.StatusCode.unknown, f"Unexpected {type(exc).__name__}: {exc}"
        ops = (self._op_status(context.trailing_metadata, code, details, 0), self._op_close(0))
        if not stream.metadata_sent:
            ops = (self._op_initial((), 0), *ops)
        try:
            stream.call.start_server_batch(ops, None)
        except Exception:
            _LOGGER.debug("could not end a gRPC stream", exc_info=True)

    async def _write(self, stream: _Stream, body: bytes) -> bool:
        stream.write_done = self._loop.create_future()
        ops = (self._op_message(body, 0),)
        if not stream.metadata_sent:
            ops = (self._op_initial((), 0), *ops)
            stream.metadata_sent = True
        stream.call.start_server_batch(ops, _StreamTag(stream, False))
        return await stream.write_done


def _remaining(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - loop.time(), 0.0)


def _feed(stream: _Stream, item: Any) -> None:
    stream.inbox.put_nowait(item)


def _resolve(future: asyncio.Future | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _message_name(handler: grpc.RpcMethodHandler) -> str:
    owner = getattr(handler.request_deserializer, "__self__", None)  # FromString is a bound classmethod
    return getattr(owner, "__name__", "request")


def _status_number(code: Any) -> int:
    """The C-core number of a ``grpc.StatusCode`` (or pass a number through)."""
    if isinstance(code, grpc.StatusCode):
        return code.value[0]
    return int(code)


def handler_table(add_servicer_to_server: Callable[[Any, Any], None], servicer: Any) -> dict[bytes, grpc.RpcMethodHandler]:
    """Method path -> handler, from a generated ``add_<Service>Servicer_to_server`` function."""
    collector = HandlerCollector()
    add_servicer_to_server(servicer, collector)
    return collector.handlers
