"""The KServe v2 gRPC frontend: Triton's ``inference.GRPCInferenceService`` over the inference core.

The servicer subclasses tritonclient's generated ``GRPCInferenceServiceServicer`` and is registered
through the generated ``add_GRPCInferenceServiceServicer_to_server``, so method names, messages and
(de)serializers come from Triton's own proto. Two engines can serve it on the server's event loop:

* ``"native"`` (the default where available): :mod:`nbserve.serving._grpc_engine`, which drives
  grpc's C core directly. Its ModelInfer goes from grpc's polling thread straight to the batcher
  (:func:`make_direct_infer`); each batch's answers are encoded on the model's instance thread and
  sent from the engine's answer thread. On the 2-core reference machine (perf_analyzer, DESIGN.md's
  MLP) it serves 0.5-1.0x Triton's gRPC throughput, where grpc.aio manages 0.3-0.7x at 3-4x the CPU
  per request;
* ``"aio"``: a plain ``grpc.aio`` server, the fallback when grpc's C-core layer is not usable.

Environment: ``NBSERVE_GRPC_ENGINE=aio`` (or ``native``) overrides the choice;
``NBSERVE_GRPC_DIRECT=0`` sends the native engine's ModelInfer through the servicer on the loop
(a diagnostic switch). Errors map each nbserve error's ``grpc_status`` to the call's status code,
with the error's message (which names the fix) as details. ModelStreamInfer answers each request
in the stream, errors in ``error_message``. Shared memory, trace and log settings answer
UNIMPLEMENTED.

Example (what ``nbserve.serve()`` does on its loop)::

    endpoint = await start_grpc(core, "127.0.0.1", 0)
    client = tritonclient.grpc.InferenceServerClient(f"127.0.0.1:{endpoint.port}")
    await endpoint.close()
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import Any

from ..errors import ConfigError, InvalidInput, NbserveError
from ._grpc_codec import decode_infer_request, encode_infer_response, parameter_value
from .core import InferResult

__all__ = ["start_grpc", "GrpcEndpoint", "make_servicer", "DEFAULT_MAX_MESSAGE_BYTES"]

_LOGGER = logging.getLogger("nbserve.grpc")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
_ENGINES = ("auto", "native", "aio")
_UNAUTHENTICATED = (
    "missing or wrong bearer token: send the metadata ('authorization', 'Bearer <token>'), "
    "e.g. client.infer(..., headers={'authorization': 'Bearer <token>'}) with tritonclient"
)
_SHM_DETAILS = (
    "{what} is not supported by nbserve: send tensors inside the request (tritonclient does this "
    "unless you register shared memory), or serve the exported repository with tritonserver"
)


def status_for(exc: BaseException) -> tuple[Any, str]:
    """The gRPC status code and details for an error: nbserve errors carry their own."""
    import grpc

    if isinstance(exc, NbserveError):
        return getattr(grpc.StatusCode, exc.grpc_status, grpc.StatusCode.INTERNAL), str(exc)
    _LOGGER.error("unexpected error in a gRPC call", exc_info=exc)
    return grpc.StatusCode.INTERNAL, (f"internal server error ({type(exc).__name__}: {exc}); "
                                      "this is a bug in nbserve: please report it")


def make_servicer(core: Any, *, token: str | None = None) -> Any:
    """A ``GRPCInferenceServiceServicer`` answering from ``core`` (an ``InferenceCore``).

    Args:
        core: the inference core (see .notes/SERVING_API.md for the contract).
        token: when set, every call but ServerLive/ServerReady needs the metadata
            ``authorization: Bearer <token>``, else UNAUTHENTICATED.

    Returns:
        The servicer; register it with ``service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server``.
    """
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    expected_auth = None if token is None else f"Bearer {token}".encode()
    Code = grpc.StatusCode
    live_response = {True: pb.ServerLiveResponse(live=True), False: pb.ServerLiveResponse(live=False)}
    ready_response = {True: pb.ServerReadyResponse(ready=True), False: pb.ServerReadyResponse(ready=False)}
    TensorMetadata = pb.ModelMetadataResponse.TensorMetadata

    async def fail(context: Any, exc: BaseException) -> None:
        await context.abort(*status_for(exc))

    def authorized(metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, expected_auth)
        return False

    async def authorize(context: Any) -> None:
        if not authorized(context.invocation_metadata()):
            await context.abort(Code.UNAUTHENTICATED, _UNAUTHENTICATED)

    class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        """Triton's GRPCInferenceService over an nbserve ``InferenceCore``."""

        # -------------------------------------------------------------- health and metadata
        async def ServerLive(self, request, context):
            return live_response[bool(core.live())]

        async def ServerReady(self, request, context):
            return ready_response[bool(core.ready())]

        async def ModelReady(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            return pb.ModelReadyResponse(ready=bool(core.model_ready(request.name, request.version or None)))

        async def ServerMetadata(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            meta = core.server_metadata()
            return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                             extensions=meta.get("extensions", []))

        async def ModelMetadata(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            try:
                meta = core.model_metadata(request.name, request.version or None)
            except Exception as exc:
                await fail(context, exc)

            def tensors(items):
                return [TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in items]

            return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                            inputs=tensors(meta["inputs"]), outputs=tensors(meta["outputs"]))

        async def ModelConfig(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            try:
                config = core.model_config(request.name, request.version or None)
            except Exception as exc:
                await fail(context, exc)
            response = pb.ModelConfigResponse()
            response.config.CopyFrom(config)
            return response

        async def ModelStatistics(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            try:
                stats = core.model_statistics(request.name, request.version)
                return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)
            except Exception as exc:
                await fail(context, exc)

        # -------------------------------------------------------------- inference
        async def ModelInfer(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            try:
                decoded = decode_infer_request(request)
                result = await core.infer(
                    decoded.model,
                    decoded.inputs,
                    version=decoded.version or None,
                    outputs=decoded.outputs,
                    priority=decoded.priority,
                    timeout_us=decoded.timeout_us,
                    request_id=decoded.id,
                    parameters=decoded.parameters or None,
                )
                return infer_response(core, decoded, result)
            except Exception as exc:
                await fail(context, exc)

        async def ModelStreamInfer(self, request_iterator, context):
            # Triton's stream: each request gets one response; errors travel in error_message and
            # the stream keeps going. Requests run concurrently and answer in completion order.
            if expected_auth is not None:
                await authorize(context)
            queue: asyncio.Queue = asyncio.Queue()
            running: set[asyncio.Task] = set()
            stream_context = _StreamContext(tuple(context.invocation_metadata() or ()))

            async def one(request):
                try:
                    response = await self.ModelInfer(request, stream_context)
                    await queue.put(pb.ModelStreamInferResponse(infer_response=response))
                except _StreamAbort as abort:
                    await queue.put(pb.ModelStreamInferResponse(
                        error_message=abort.details,
                        infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                              model_version=request.model_version,
                                                              id=request.id)))

            async def read():
                async for request in request_iterator:
                    task = asyncio.ensure_future(one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(set(running))
                await queue.put(None)

            reader = asyncio.ensure_future(read())
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    yield item
                await reader
            finally:
                reader.cancel()
                for task in list(running):
                    task.cancel()

        # -------------------------------------------------------------- repository
        async def RepositoryIndex(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            try:
                index = core.repository_index(ready=request.ready)
            except Exception as exc:
                await fail(context, exc)
            Index = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(models=[
                Index(name=m["name"], version=str(m.get("version", "")), state=m.get("state", ""),
                      reason=m.get("reason", "")) for m in index
            ])

        async def RepositoryModelLoad(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            try:
                config = None
                for key, param in request.parameters.items():
                    value = parameter_value(param)
                    if key == "config":
                        if not isinstance(value, str):
                            raise InvalidInput("the 'config' load parameter must be a string of JSON",
                                               model=request.model_name, got=type(value).__name__,
                                               hint="pass config=json.dumps(model_config_dict)")
                        config = value
                    elif key.startswith("file:"):
                        raise InvalidInput(
                            "loading model files through the load API is not supported",
                            model=request.model_name,
                            got=key,
                            hint="register the model in the notebook (nbserve.register) or put the files in "
                                 "the served repository, then load it by name",
                        )
                await core.load_model(request.model_name, config=config)
            except Exception as exc:
                await fail(context, exc)
            return pb.RepositoryModelLoadResponse()

        async def RepositoryModelUnload(self, request, context):
            if expected_auth is not None:
                await authorize(context)
            try:
                dependents = request.parameters.get("unload_dependents")
                await core.unload_model(request.model_name,
                                        unload_dependents=bool(dependents is not None and parameter_value(dependents)))
            except Exception as exc:
                await fail(context, exc)
            return pb.RepositoryModelUnloadResponse()

        # -------------------------------------------------------------- not offered
        async def SystemSharedMemoryStatus(self, request, context):
            await context.abort(Code.UNIMPLEMENTED, _SHM_DETAILS.format(what="system shared memory"))

        async def SystemSharedMemoryRegister(self, request, context):
            await context.abort(Code.UNIMPLEMENTED, _SHM_DETAILS.format(what="system shared memory"))

        async def SystemSharedMemoryUnregister(self, request, context):
            await context.abort(Code.UNIMPLEMENTED, _SHM_DETAILS.format(what="system shared memory"))

        async def CudaSharedMemoryStatus(self, request, context):
            await context.abort(Code.UNIMPLEMENTED, _SHM_DETAILS.format(what="CUDA shared memory"))

        async def CudaSharedMemoryRegister(self, request, context):
            await context.abort(Code.UNIMPLEMENTED, _SHM_DETAILS.format(what="CUDA shared memory"))

        async def CudaSharedMemoryUnregister(self, request, context):
            await context.abort(Code.UNIMPLEMENTED, _SHM_DETAILS.format(what="CUDA shared memory"))

        async def TraceSetting(self, request, context):
            await context.abort(Code.UNIMPLEMENTED, "trace settings are not supported by nbserve: use "
                                                    "nbserve.bench and the statistics (ModelStatistics) instead")

        async def LogSettings(self, request, context):
            await context.abort(Code.UNIMPLEMENTED, "log settings are not supported by nbserve: configure the "
                                                    "'nbserve' logger with Python's logging module instead")

    class _StreamAbort(Exception):
        def __init__(self, details: str) -> None:
            super().__init__(details)
            self.details = details

    class _StreamContext:
        """Context for one request inside a stream: an error becomes that response's error_message."""

        def __init__(self, metadata: tuple) -> None:
            self._metadata = metadata

        def invocation_metadata(self) -> tuple:
            return self._metadata

        async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
            raise _StreamAbort(details)

    return InferenceServicer()


def infer_response(core: Any, decoded: Any, result: Any) -> Any:
    """The ModelInferResponse for a decoded request and the core's InferResult."""
    from tritonclient.grpc import service_pb2 as pb

    batched = False
    if decoded.classification:
        batched = core.model_config(result.model_name, result.model_version).max_batch_size > 0
    return encode_infer_response(
        pb.ModelInferResponse,
        result.model_name,
        result.model_version,
        result.outputs,
        id=decoded.id,
        parameters=result.parameters,
        classification=decoded.classification,
        batched=batched,
    )


class _Answer:
    """The batcher waiter of one direct ModelInfer call (see :meth:`InferenceCore.submit`).

    Resolving it encodes the response on the model's instance thread and hands it to grpc's C core,
    which sends it. A batch's encoded answers go, in one hand-off, to the native engine's answer
    thread (:meth:`NativeServer.answer`), so the instance thread goes back to batching while they are
    sent; a lone answer goes out at once from the instance thread. No hop through the event loop,
    whose wake-up and GIL hand-over per batch cost more than the encoding itself.
    """

    __slots__ = ("core", "call", "decoded", "requested", "version", "_done")

    def __init__(self, core: Any, call: Any, decoded: Any, requested: Any) -> None:
        self.core = core
        self.call = call
        self.decoded = decoded
        self.requested = requested
        self.version: int | None = None  # set once submit returns
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, outputs: Any) -> None:
        if not self._done:
            _send(self._reply(outputs, None))

    def set_exception(self, error: BaseException) -> None:
        if not self._done:
            _send(self._reply(None, error))

    def _reply(self, outputs: Any, error: BaseException | None) -> tuple[Any, bytes | None, tuple]:
        """``(call, body, ())`` for an answer, ``(call, None, (code, details))`` for an error."""
        self._done = True
        if error is None:
            decoded = self.decoded
            try:
                version = self.version
                if version is None:  # answered before submit returned: the route it took is the current one
                    version = self.core.served_version(decoded.model, self.requested)
                result = InferResult(decoded.model, version, outputs, decoded.id)
                return self.call, infer_response(self.core, decoded, result).SerializeToString(), ()
            except Exception as exc:
                error = exc
        return self.call, None, status_for(error)

    @staticmethod
    def resolve_batch(answers: list[tuple[_Answer, Any, BaseException | None]]) -> None:
        """One batch's answers (see :func:`~nbserve.serving.batcher.resolve_all`): encoded here, sent
        by the engine's answer thread."""
        by_server: dict[Any, list] = {}  # two gRPC endpoints on one core: each sends its own
        for answer, outputs, error in answers:
            if not answer._done:
                by_server.setdefault(answer.call.server, []).append(answer._reply(outputs, error))
        for server, replies in by_server.items():
            server.answer(_send_all, replies)


def _send(reply: tuple[Any, bytes | None, tuple]) -> None:
    call, body, failure = reply
    if body is not None:
        call.ok(body)
    else:
        call.fail(*failure)


def _send_all(replies: list[tuple[Any, bytes | None, tuple]]) -> None:
    for reply in replies:
        _send(reply)


def make_direct_infer(core: Any, *, token: str | None = None) -> Any:
    """ModelInfer for the native engine's polling thread: decode and queue there, answer from the batch.

    The request goes from grpc's polling thread straight to the batcher (no hop to the event loop
    and no task per call) with an :class:`_Answer` as its waiter; the model's instance thread
    encodes and sends each answer. Returns None when the core has no thread-safe ``submit``.
    """
    if not callable(getattr(core, "submit", None)):
        return None
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    expected_auth = None if token is None else f"Bearer {token}".encode()
    parse = pb.ModelInferRequest.FromString

    def direct_infer(payload: bytes, metadata: Any, call: Any) -> bool:
        if expected_auth is not None:
            given = next((v for k, v in metadata or () if k == "authorization"), None)
            if given is None or not hmac.compare_digest(given.encode() if isinstance(given, str) else given,
                                                        expected_auth):
                call.fail(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
                return True
        try:
            request = parse(payload)
        except Exception as exc:
            call.fail(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the request is not a valid ModelInferRequest message ({exc}): "
                      "send it with tritonclient.grpc or the generated stub")
            return True
        try:
            decoded = decode_infer_request(request)
            requested = decoded.version or None
            answer = _Answer(core, call, decoded, requested)
            # A stateful model's sequence_id/sequence_start/sequence_end arrive as request parameters.
            loaded = core.submit(decoded.model, decoded.inputs, answer, version=requested, outputs=decoded.outputs,
                                 priority=decoded.priority, timeout_us=decoded.timeout_us,
                                 parameters=decoded.parameters)
            answer.version = loaded.version
        except Exception as exc:
            call.fail(*status_for(exc))
        return True

    return direct_infer


class GrpcEndpoint:
    """A running gRPC frontend: ``port`` and ``close()`` (see the Endpoint protocol)."""

    def __init__(self, port: int, engine: str, server: Any) -> None:
        self.port = port
        self.engine = engine
        self._server = server
        self._closed = False

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting calls, finish in-flight ones (at most ``grace_s``), release the port."""
        if self._closed:
            return
        self._closed = True
        await self._server.stop(grace_s)

    def __repr__(self) -> str:
        return f"<GrpcEndpoint port={self.port} engine={self.engine}>"


def _choose_engine(engine: str | None) -> str:
    from . import _grpc_engine

    choice = (engine or os.environ.get("NBSERVE_GRPC_ENGINE") or "auto").lower()
    if choice not in _ENGINES:
        raise ConfigError(f"unknown gRPC engine {choice!r}", expected=" or ".join(_ENGINES),
                           hint="set NBSERVE_GRPC_ENGINE to 'native' or 'aio', or leave it unset")
    if choice == "auto":
        return "native" if _grpc_engine.available() else "aio"
    if choice == "native" and not _grpc_engine.available():
        raise ConfigError("the native gRPC engine needs grpc's C-core layer, which this grpcio lacks",
                           got=_grpcio_version(), hint="use engine 'aio' or install grpcio>=1.60")
    return choice


def _grpcio_version() -> str:
    import grpc

    return f"grpcio {getattr(grpc, '__version__', '?')}"


async def start_grpc(
    core: Any,
    host: str,
    port: int,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    token: str | None = None,
    engine: str | None = None,
) -> GrpcEndpoint:
    """Serve Triton's GRPCInferenceService for ``core`` on ``host:port`` from the running loop.

    Args:
        core: the inference core.
        host, port: where to listen; port 0 picks a free port (see ``GrpcEndpoint.port``).
        max_message_bytes: the largest request and response message.
        token: optional bearer token (metadata ``authorization: Bearer <token>``).
        engine: ``"native"``, ``"aio"`` or ``"auto"`` (default: ``$NBSERVE_GRPC_ENGINE`` or auto).

    Returns:
        The endpoint; ``await endpoint.close()`` stops it.

    Raises:
        ServerStateError: the address cannot be bound.
    """
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    from ..errors import ServerStateError

    chosen = _choose_engine(engine)
    servicer = make_servicer(core, token=token)
    options = [
        ("grpc.max_receive_message_length", int(max_message_bytes)),
        ("grpc.max_send_message_length", int(max_message_bytes)),
        # Two nbserve servers must never share a port (re-running a notebook cell starts a new one).
        ("grpc.so_reuseport", 0),
    ]
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    if chosen == "native":
        from ._grpc_engine import NativeServer, handler_table

        handlers = handler_table(service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, servicer)
        direct = {}
        if os.environ.get("NBSERVE_GRPC_DIRECT", "1") != "0":
            direct_infer = make_direct_infer(core, token=token)
            if direct_infer is not None:
                direct[b"/inference.GRPCInferenceService/ModelInfer"] = direct_infer
        try:
            server: Any = NativeServer(handlers, asyncio.get_running_loop(), options, direct=direct)
        except (TypeError, AttributeError, ValueError) as exc:
            # grpc's private layer changed shape in this grpcio: serve with grpc.aio instead.
            if (engine or os.environ.get("NBSERVE_GRPC_ENGINE") or "auto").lower() == "native":
                raise ConfigError("the native gRPC engine cannot drive this grpcio", got=_grpcio_version(),
                                  hint="use NBSERVE_GRPC_ENGINE=aio") from exc
            _LOGGER.warning("native gRPC engine unavailable (%s); using grpc.aio", exc)
            chosen = "aio"
        else:
            bound = server.add_insecure_port(address)
            if not bound:
                raise ServerStateError(f"cannot listen for gRPC on {address}",
                                       hint="choose another port, or 0 for a free one")
            server.start()
            return GrpcEndpoint(bound, chosen, server)

    server = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound, cause = 0, exc
    else:
        cause = None
    if not bound:
        raise ServerStateError(f"cannot listen for gRPC on {address}",
                               hint="choose another port, or 0 for a free one") from cause
    await server.start()
    return GrpcEndpoint(bound, chosen, server)
