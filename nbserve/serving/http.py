"""The KServe v2 REST frontend with Triton's extensions, on aiohttp.

Endpoints and JSON shapes are Triton's, so ``tritonclient.http`` (sync and ``aio``) and perf_analyzer
work unchanged::

    GET  /v2/health/live | /v2/health/ready                  200, or 400 (KServe: 4xx means false)
    GET  /v2                                                 server metadata
    GET  /v2/models/{m}[/versions/{v}]                       model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready                 200, or 4xx with the reason
    GET  /v2/models/{m}[/versions/{v}]/config                the ModelConfig as Triton renders it
    GET  /v2/models/stats, /v2/models/{m}[/versions/{v}]/stats
    POST /v2/models/{m}[/versions/{v}]/infer                 JSON and binary tensor data
    POST /v2/repository/index, /v2/repository/models/{m}/load | /unload

Errors are ``{"error": "<message>"}`` with the status of the nbserve error (400 bad input, 404
unknown model, 503 not ready or busy, 500 the model raised), 413 for a body over
``max_body_bytes``, 401 without the bearer token. The request path is kept lean: one read of the
body, zero-copy NumPy views of binary inputs, one write of the response, no middleware unless a
token is set.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ..errors import InvalidInput, ModelNotFound, NbserveError
from . import protocol
from .http_fastlane import FastLane, FastLaneConnections, encode_answer, internal_error_message, response_head
from .protocol import HEADER_LENGTH, decode_request, error_body, parse_header_length

__all__ = ["create_app", "start_http", "HttpEndpoint", "RequestTooLarge", "UnsupportedEncoding", "config_to_json"]

log = logging.getLogger("nbserve.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_JSON = "application/json"
_BINARY = "application/octet-stream"
_SHUTDOWN_TIMEOUT_S = 5.0


def _json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=protocol.dumps(value), status=status, content_type=_JSON)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=error_body(message), status=status, content_type=_JSON, headers=headers)


def _nbserve_error(exc: NbserveError) -> web.Response:
    return _error(exc.status_code, str(exc))


def _internal_error(request: web.Request, exc: BaseException) -> web.Response:
    log.exception("unexpected error in %s %s", request.method, request.path)
    return _error(500, internal_error_message(request.method, request.path, exc))


def _guard(handler: Handler) -> Handler:
    """Turn nbserve errors into Triton's JSON error body with the error's status code."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NbserveError as exc:
            return _nbserve_error(exc)
        except web.HTTPException:
            raise
        except Exception as exc:
            return _internal_error(request, exc)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


# ----------------------------------------------------------------------------- config rendering
def _fix_int64(descriptor: Descriptor, value: dict[str, Any]) -> None:
    """protobuf's JSON writes 64-bit integers as strings; Triton (and perf_analyzer) use numbers."""
    for field in descriptor.fields:
        item = value.get(field.name)
        if item is None:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            message = field.message_type
            if message.GetOptions().map_entry:
                value_field = message.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    for entry in item.values():
                        _fix_int64(value_field.message_type, entry)
                elif value_field.cpp_type in _INT64_TYPES:
                    for key in item:
                        item[key] = int(item[key])
            elif _is_repeated(field):
                for entry in item:
                    _fix_int64(message, entry)
            else:
                _fix_int64(message, item)
        elif field.cpp_type in _INT64_TYPES:
            value[field.name] = [int(v) for v in item] if isinstance(item, list) else int(item)


_INT64_TYPES = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 5.28 deprecates ``label`` in favour of ``is_repeated``.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def config_to_json(config: Any) -> dict[str, Any]:
    """A ModelConfig as Triton's ``/config`` endpoint returns it.

    Proto field names, every field with no presence printed with its default (protobuf's
    ``always_print_primitive_fields``, as Triton does), enums by name, 64-bit integers as numbers.
    """
    try:
        value = json_format.MessageToDict(
            config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26 names the option differently
        value = json_format.MessageToDict(
            config, preserving_proto_field_name=True, including_default_value_fields=True
        )
    _fix_int64(config.DESCRIPTOR, value)
    return value


# ----------------------------------------------------------------------------- the application
class _Routes:
    """The handlers, bound to one core."""

    def __init__(self, core: Any, max_body_bytes: int) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes

    # ------------------------------------------------------------------ health and metadata
    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.core.live() else 400)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.core.ready() else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json_response(self.core.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        match = request.match_info
        return _json_response(self.core.model_metadata(match["model"], match.get("version")))

    async def model_ready(self, request: web.Request) -> web.Response:
        match = request.match_info
        model, version = match["model"], match.get("version")
        if self.core.model_ready(model, version):
            return web.Response(status=200)
        # KServe: readiness is 200 or a 4xx; say why it is not ready.
        try:
            self.core.model_metadata(model, version)
        except ModelNotFound as exc:
            return _error(404, str(exc))
        except NbserveError as exc:
            return _error(400, str(exc))
        return _error(400, f"model '{model}' is not ready")

    async def model_config(self, request: web.Request) -> web.Response:
        match = request.match_info
        config = self.core.model_config(match["model"], match.get("version"))
        return _json_response(config_to_json(config))

    async def model_stats(self, request: web.Request) -> web.Response:
        match = request.match_info
        return _json_response(self.core.model_statistics(match.get("model", ""), match.get("version") or ""))

    # ------------------------------------------------------------------ repository
    async def _json_body(self, request: web.Request, what: str) -> dict[str, Any]:
        body = await self._read(request)
        if not body:
            return {}
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the {what} request body is not valid JSON ({exc})",
                               hint="send a JSON object, or an empty body") from None
        if not isinstance(value, dict):
            raise InvalidInput(f"the {what} request body must be a JSON object", got=type(value).__name__)
        return value

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, "repository index")
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput("'ready' must be true or false", got=repr(ready))
        return _json_response(self.core.repository_index(ready=ready))

    async def load(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        parameters = (await self._json_body(request, "load")).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("load 'parameters' must be a JSON object", model=model)
        files = [key for key in parameters if key.startswith("file:")]
        if files:
            raise InvalidInput(
                f"loading model files over HTTP ({', '.join(files)}) is not supported",
                model=model,
                hint="register the model in the notebook (nbserve.register) or put its files in the served repository",
            )
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidInput("parameters.config must be the model config as a JSON string", model=model,
                               got=type(config).__name__, hint="send json.dumps(config_dict)")
        await self.core.load_model(model, config)
        return web.Response(status=200, content_type=_JSON)

    async def unload(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        parameters = (await self._json_body(request, "unload")).get("parameters") or {}
        dependents = parameters.get("unload_dependents", False) if isinstance(parameters, dict) else False
        if not isinstance(dependents, bool):
            raise InvalidInput("parameters.unload_dependents must be true or false", model=model,
                               got=repr(dependents))
        await self.core.unload_model(model, unload_dependents=dependents)
        return web.Response(status=200, content_type=_JSON)

    async def named_repository(self, request: web.Request) -> web.Response:
        return _error(400, "'repository_name' specification is not supported: nbserve serves one repository; "
                           "use /v2/repository/index and /v2/repository/models/<model>/load")

    # ------------------------------------------------------------------ inference
    async def _read(self, request: web.Request, model: str | None = None) -> bytes:
        limit = self.max_body_bytes
        encoding = request.headers.get("Content-Encoding")
        if encoding is None or encoding == "identity":
            length = request.content_length
            if length is not None and length > limit:
                raise RequestTooLarge(length, limit, model)  # refused before reading it
        elif encoding.strip().lower() not in ("gzip", "deflate"):
            raise UnsupportedEncoding(encoding, model)
        # aiohttp inflates gzip/deflate bodies as it reads them and stops at client_max_size,
        # so the limit holds for the decompressed size (a small body cannot inflate without bound).
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(None, limit, model) from None
        except RequestPayloadError as exc:
            detail = " ".join(str(exc).split("message:", 1)[-1].split())
            raise InvalidInput(
                f"the request body cannot be read ({detail})",
                model=model,
                hint=f"send a valid {encoding} body, or drop the Content-Encoding header" if encoding
                else "send the whole body that Content-Length announces",
            ) from None

    async def infer(self, request: web.Request) -> web.StreamResponse | _Sent:
        match = request.match_info
        return await self.infer_on(request, match["model"], match.get("version"))

    async def infer_on(self, request: web.BaseRequest, model: str, version: str | None) -> web.StreamResponse | _Sent:
        """The inference handler proper; ``model`` and ``version`` come from the path."""
        try:
            # One copy into a bytearray makes the binary inputs writable views: models may change
            # their inputs in place (as in Triton's Python backend), and a request batched with
            # others (a new array) or run alone (a view of the body) must behave the same.
            body = bytearray(await self._read(request, model))
            header = request.headers.get(HEADER_LENGTH)
            header_length = None if header is None else parse_header_length(header, len(body), model=model)
            decoded = decode_request(body, header_length, model=model)
            core = self.core
            result = await core.infer(
                model,
                decoded.inputs,
                version=version,
                outputs=decoded.outputs,
                priority=decoded.priority,
                timeout_us=decoded.timeout_us,
                request_id=decoded.id,
                parameters=decoded.parameters,
            )
            payload, json_length, encoding = encode_answer(core, result, decoded, request.headers.get("Accept-Encoding"))
        except NbserveError as exc:
            return _nbserve_error(exc)
        except Exception as exc:
            return _internal_error(request, exc)
        transport = request.transport
        if len(payload) <= _RAW_WRITE_MAX_BYTES and transport is not None and not transport.is_closing():
            # The whole response in one write, without aiohttp's Response machinery (header
            # multidicts, prepare, write_eof): on a saturated event loop that is a large share
            # of the per-request work. Large bodies go through aiohttp, which applies backpressure.
            http = request.version
            head = response_head(f"{http.major}.{http.minor}", request.keep_alive, len(payload), json_length, encoding)
            transport.write(head + payload)
            return _Sent(request.keep_alive)
        if json_length is None:
            headers = {"Content-Type": _JSON}
        else:
            headers = {"Content-Type": _BINARY, HEADER_LENGTH: str(json_length)}
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        return web.Response(body=payload, headers=headers)

    # ------------------------------------------------------------------ everything else
    async def unsupported(self, request: web.Request) -> web.Response:
        path = request.path
        if "sharedmemory" in path:
            if path.endswith("/status") and request.method == "GET":
                return _json_response([])  # no regions are registered
            what = "shared-memory tensors are"
            fix = "send tensors in the request body (set_data_from_numpy) instead of set_shared_memory"
        elif "/trace/" in path:
            what, fix = "tracing is", "use the statistics extension (GET /v2/models/stats) or /metrics"
        elif path.startswith("/v2/logging"):
            what, fix = "runtime log settings are", "configure Python logging for 'nbserve' in the notebook"
        else:
            what, fix = "this endpoint is", "see GET /v2 for the supported extensions"
        return _error(400, f"{what} not supported by nbserve ({request.method} {path}): {fix}")

    async def not_found(self, request: web.Request) -> web.Response:
        if _KNOWN_PATH.fullmatch(request.path):
            return _error(405, f"Method Not Allowed: {request.method} {request.path}")
        return _error(404, f"Not Found: {request.path} is not a KServe v2 endpoint; the API lives under /v2 "
                           "(e.g. GET /v2/models/<model>, POST /v2/models/<model>/infer)")


# The paths Triton serves (its own routing regexes): a wrong method on one of them is 405, not 404.
_KNOWN_PATH = re.compile(
    r"/v2(?:/health/(?:live|ready))?"
    r"|/v2/models/stats"
    r"|/v2/models/[^/]+(?:/versions/[0-9]+)?(?:/(?:infer|generate|generate_stream|ready|config|stats))?"
    r"|/v2/repository(?:/[^/]+)?/(?:index|models/[^/]+/(?:load|unload))"
)


class RequestTooLarge(InvalidInput):
    """A request body over ``max_body_bytes`` (HTTP 413)."""

    status_code = 413

    def __init__(self, size: int | None, limit: int, model: str | None) -> None:
        super().__init__(
            "the request body is too large",
            model=model,
            expected=f"at most {limit} bytes (the server's max_body_bytes)",
            got=f"{size} bytes" if size is not None else "more",
            hint="send smaller batches, or start the server with a larger limit, e.g. "
            f"nbserve.serve(max_body_bytes={max(limit * 4, (size or 0) * 2)})",
        )


class UnsupportedEncoding(InvalidInput):
    """A request Content-Encoding other than gzip, deflate or identity (HTTP 415)."""

    status_code = 415

    def __init__(self, encoding: str, model: str | None) -> None:
        super().__init__(f"unsupported Content-Encoding {encoding!r}", model=model,
                         expected="gzip, deflate or identity", got=encoding,
                         hint="compress the request with gzip or deflate, or not at all")


# Responses up to this size are written straight to the transport (see _Routes.infer_on).
_RAW_WRITE_MAX_BYTES = 256 * 1024


class _Sent:
    """What a handler returns once it wrote its whole response to the transport itself.

    aiohttp's request loop only calls ``prepare``/``write_eof`` and reads ``keep_alive``.
    """

    __slots__ = ("keep_alive",)

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _with_token(handler: Handler, token: str) -> Handler:
    expected = f"Bearer {token}".encode()

    async def authorized(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), expected):
            problem = "is missing" if not given else "does not match the server's token"
            return _error(
                401,
                f"unauthorized: the bearer token {problem}. Fix: send the header 'Authorization: Bearer <token>' "
                "(tritonclient: headers={'Authorization': 'Bearer <token>'})",
                headers={"WWW-Authenticate": 'Bearer realm="nbserve"'},
            )
        return await handler(request)

    authorized.__name__ = handler.__name__
    return authorized


def create_app(core: Any, *, max_body_bytes: int = 64 * 2**20, token: str | None = None) -> web.Application:
    """The aiohttp application serving ``core`` over KServe v2 REST.

    Args:
        core: an :class:`~nbserve.serving.core.InferenceCore`.
        max_body_bytes: the largest request body accepted (after decompression); larger ones get 413.
        token: when set, every request except ``/v2/health/live`` and ``/v2/health/ready`` must carry
            ``Authorization: Bearer <token>`` (else 401).

    Returns:
        The application; run it with :func:`start_http` (or aiohttp's test utilities).
    """
    routes = _Routes(core, max_body_bytes)
    # aiohttp enforces client_max_size while reading; our own check gives Triton's JSON error.
    app = web.Application(client_max_size=max_body_bytes + 1)

    def add(method: str, path: str, handler: Handler, *, guard: bool = True, public: bool = False) -> None:
        if guard:
            handler = _guard(handler)
        if token is not None and not public:
            handler = _with_token(handler, token)
        app.router.add_route(method, path, handler)

    add("GET", "/v2/health/live", routes.live, guard=False, public=True)
    add("GET", "/v2/health/ready", routes.ready, guard=False, public=True)
    add("GET", "/v2", routes.server_metadata)
    add("GET", "/v2/models/stats", routes.model_stats)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        add("POST", prefix + "/infer", routes.infer, guard=False)  # handles its own errors, fast path
        add("GET", prefix, routes.model_metadata)
        add("GET", prefix + "/ready", routes.model_ready)
        add("GET", prefix + "/config", routes.model_config)
        add("GET", prefix + "/stats", routes.model_stats)
    add("POST", "/v2/repository/index", routes.repository_index)
    add("POST", "/v2/repository/models/{model}/load", routes.load)
    add("POST", "/v2/repository/models/{model}/unload", routes.unload)
    add("POST", "/v2/repository/{repository}/index", routes.named_repository)
    add("POST", "/v2/repository/{repository}/models/{model}/{action}", routes.named_repository)
    for prefix in ("/v2/systemsharedmemory", "/v2/cudasharedmemory", "/v2/trace", "/v2/logging",
                   "/v2/models/{model}/trace"):
        add("*", prefix + "{tail:.*}", routes.unsupported)
    # Everything else: Triton answers JSON errors, not aiohttp's text pages.
    add("*", "/{tail:.*}", routes.not_found, public=True)
    return app


class HttpEndpoint:
    """A running HTTP frontend: ``port`` is the real port; ``close()`` drains and releases it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.AbstractServer, lanes: FastLaneConnections | None,
                 host: str, port: int) -> None:
        self._runner = runner
        self._server = server
        self._lanes = lanes
        self.host = host
        self.port = port

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close connections and the socket."""
        self._server.close()
        if self._lanes is not None:
            await self._lanes.close(_SHUTDOWN_TIMEOUT_S)
        await self._runner.cleanup()

    def __repr__(self) -> str:
        return f"<HttpEndpoint http://{self.host}:{self.port}>"


def fast_lane_enabled() -> bool:
    """The inference fast lane (see ``http_fastlane``) is on unless NBSERVE_HTTP_FASTLANE=0."""
    return os.environ.get("NBSERVE_HTTP_FASTLANE", "1").strip().lower() not in ("0", "false", "no", "off")


async def start_http(
    core: Any, host: str, port: int, *, max_body_bytes: int = 64 * 2**20, token: str | None = None
) -> HttpEndpoint:
    """Serve ``core`` over KServe v2 REST on ``host:port`` (0 picks a free port) from the running loop.

    Connections start in the inference fast lane (:mod:`~nbserve.serving.http_fastlane`) and move to
    aiohttp at their first request of another kind; ``NBSERVE_HTTP_FASTLANE=0`` serves everything
    with aiohttp.

    >>> # inside the server's event loop:
    >>> # endpoint = await start_http(core, "127.0.0.1", 0); print(endpoint.port); await endpoint.close()
    """
    app = create_app(core, max_body_bytes=max_body_bytes, token=token)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    lanes = FastLaneConnections() if fast_lane_enabled() else None
    aiohttp_protocol = runner.server
    assert aiohttp_protocol is not None

    def protocol() -> asyncio.Protocol:
        if lanes is None:
            return aiohttp_protocol()
        return FastLane(core, aiohttp_protocol, lanes, max_body_bytes, token)

    try:
        server = await asyncio.get_running_loop().create_server(protocol, host, port, backlog=1024,
                                                                reuse_address=True)
    except BaseException:
        await runner.cleanup()
        raise
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    return HttpEndpoint(runner, server, lanes, host, bound)
