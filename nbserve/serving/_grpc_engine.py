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
(receive the message; send metadata + message + status and wait for close) and hops to the event
loop once, and several calls arriving together share that hop. Handlers are the servicer's own
``async def`` methods, found through the generated ``add_GRPCInferenceServiceServicer_to_server``
(the stub is the single source of method names, serializers and deserializers), and run as tasks
on the event loop. The same constant-response experiment runs at about 10,000 calls/s.

``cygrpc`` is grpc's private layer; :func:`available` checks that the pieces used here exist, and
the frontend falls back to grpc.aio when they do not.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

_LOGGER = logging.getLogger("nbserve.grpc")

__all__ = ["available", "NativeServer", "HandlerCollector", "AbortRpc"]

_NEW_CALL = "nbserve-new-call"
_SHUTDOWN = "nbserve-shutdown"
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
    """One unary call, from its arrival to its final batch."""

    __slots__ = ("call", "handler", "metadata", "deadline", "payload")

    def __init__(self, call: Any, handler: grpc.RpcMethodHandler, metadata: Any, deadline: float | None) -> None:
        self.call = call
        self.handler = handler
        self.metadata = metadata
        self.deadline = deadline
        self.payload: bytes | None = None


class Context:
    """The part of ``grpc.aio.ServicerContext`` that nbserve's servicer uses."""

    __slots__ = ("_rpc", "trailing_metadata")

    def __init__(self, rpc: _Call) -> None:
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
            ``unary_unary`` is an ``async def (request, context)``. Streaming methods answer
            UNIMPLEMENTED.
        loop: the event loop the handlers run on.
        options: grpc channel arguments (``("grpc.max_receive_message_length", n)``...).
    """

    def __init__(self, handlers: Mapping[bytes, grpc.RpcMethodHandler], loop: asyncio.AbstractEventLoop,
                 options: Iterable[tuple[str, Any]] = ()) -> None:
        from grpc._cython import cygrpc

        self._cygrpc = cygrpc
        self._handlers = dict(handlers)
        self._loop = loop
        self._cq = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(tuple(options), False)
        self._server.register_completion_queue(self._cq)
        self._pending: collections.deque[_Call] = collections.deque()
        self._wake_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped: asyncio.Future | None = None  # resolved by the polling thread as it exits
        self._ok = cygrpc.StatusCode.ok
        self._op_initial = cygrpc.SendInitialMetadataOperation
        self._op_message = cygrpc.SendMessageOperation
        self._op_status = cygrpc.SendStatusFromServerOperation
        self._op_close = cygrpc.ReceiveCloseOnServerOperation

    def add_insecure_port(self, address: str) -> int:
        """Bind ``host:port`` (port 0 picks a free one); returns the bound port, 0 on failure."""
        return self._server.add_http2_port(address.encode())

    def start(self) -> None:
        self._server.start()
        for _ in range(_REQUESTS_IN_RESERVE):
            self._server.request_call(self._cq, self._cq, _NEW_CALL)
        self._thread = threading.Thread(target=self._poll, name="nbserve-grpc-poll", daemon=True)
        self._thread.start()

    async def stop(self, grace_s: float | None) -> None:
        """Stop accepting calls, let in-flight handlers finish (at most ``grace_s``), release the port."""
        if self._thread is None or self._stopping:
            return
        self._stopping = True
        self._stopped = self._loop.create_future()
        self._server.shutdown(self._cq, _SHUTDOWN)
        tasks = set(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        # Calls still running after the grace period (and calls whose client went quiet) end here.
        self._server.cancel_all_calls()
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), timeout=10.0)
        except asyncio.TimeoutError:
            _LOGGER.warning("the gRPC server did not shut down within 10 s")
        for task in list(self._tasks):
            task.cancel()
        self._thread.join(timeout=1.0)

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
                    continue  # a final batch finished: nothing left to do for that call
                if type(tag) is _Call:
                    tag.payload = event.batch_operations[0].message() if event.success else None
                    pending.append(tag)
                    if not self._wake_scheduled:
                        self._wake_scheduled = True
                        self._wake()
                elif tag is _NEW_CALL:
                    if not event.success:  # the server is shutting down
                        continue
                    if not self._stopping:
                        try:
                            server.request_call(cq, cq, _NEW_CALL)
                        except ValueError:  # shutdown began between the check and the call
                            pass
                    details = event.call_details
                    handler = handlers.get(details.method)
                    if handler is None or handler.request_streaming or handler.response_streaming:
                        self._reject(event.call, details.method, handler)
                        continue
                    call = _Call(event.call, handler, event.invocation_metadata, details.deadline)
                    call.call.start_server_batch((receive(0),), call)
                elif tag is _SHUTDOWN:  # every call has finished
                    server.destroy()
                    cq.shutdown()
        except Exception:  # pragma: no cover - a bug here would hang every client; make it loud
            _LOGGER.exception("the gRPC polling thread failed")
        finally:
            self._signal_stopped()

    def _signal_stopped(self) -> None:
        done = self._stopped
        if done is None:
            return
        try:
            self._loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
        except RuntimeError:  # the loop is closed; stop() is not waiting any more
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
            details = f"{method.decode(errors='replace')} is a streaming method, which this server does not offer yet"
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
            self._send_status(rpc, self._cygrpc.StatusCode.internal, f"could not parse the request message: {exc}")
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
            self._send_status(rpc, self._cygrpc.StatusCode.internal, f"could not serialize the response: {exc}")
            return
        try:
            rpc.call.start_server_batch(
                (
                    self._op_initial((), 0),
                    self._op_message(body, 0),
                    self._op_status(context.trailing_metadata, self._ok, "", 0),
                    self._op_close(0),
                ),
                None,
            )
        except Exception:  # the call is gone (server stopped): nothing to answer
            _LOGGER.debug("could not answer a gRPC call", exc_info=True)

    def _send_status(self, rpc: _Call, code: int, details: str, trailing: tuple = ()) -> None:
        try:
            rpc.call.start_server_batch(
                (self._op_initial((), 0), self._op_status(trailing, code, details, 0), self._op_close(0)), None
            )
        except Exception:
            _LOGGER.debug("could not answer a gRPC call", exc_info=True)


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
