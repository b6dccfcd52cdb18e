"""A fast lane for KServe v2 inference requests, in front of aiohttp.

On a saturated event loop, aiohttp's per-request machinery (request and stream objects, routing,
the handler task) costs about as much as decoding the request, queueing it and encoding the
answer together. Inference requests are almost all alike (``POST /v2/models/{m}[/versions/{v}]/infer``
with a Content-Length body), so each connection starts in a fast lane: :class:`FastLane` parses
the request head with httptools (llhttp, the parser aiohttp itself uses), queues the request on the
core with a future, and writes the answer from that future's callback: no task, no request object.

Anything else hands the connection over to aiohttp for good, with every byte not yet answered:
another endpoint, chunked or compressed bodies, ``Expect``, an upgrade, a body over the limit, a
missing or wrong bearer token, a head httptools rejects. aiohttp then answers exactly as it does
without the fast lane (errors, 413, 401, ...). Requests on one connection are answered in order:
the lane serves one at a time and hands over only between requests.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools
from aiohttp.helpers import rfc822_formatted_time

from ..errors import ModelNotReady, NbserveError
from .core import InferResult
from .protocol import HEADER_LENGTH, decode_request, encode_response, error_body, parse_header_length

__all__ = ["FastLane", "FastLaneConnections", "compress", "encode_answer", "internal_error_message", "response_head",
           "COMPRESS_MIN_BYTES"]

log = logging.getLogger("nbserve.http")

# Responses smaller than this go back uncompressed even when the client accepts gzip/deflate:
# HTTP always allows identity, and compressing a few hundred bytes costs more than it saves
# (aiohttp clients, tritonclient.http.aio among them, send "Accept-Encoding: gzip, deflate").
COMPRESS_MIN_BYTES = 1024
_MAX_HEAD_BYTES = 16 * 1024  # a longer head is not an inference request we serve here
_INFER_PATH = re.compile(rb"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_HEADER_LENGTH = HEADER_LENGTH.lower().encode()
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Payload Too Large",
            415: "Unsupported Media Type", 500: "Internal Server Error", 503: "Service Unavailable"}


def compress(payload: bytes, accept: str) -> tuple[bytes, str | None]:
    """Triton's choice of response encoding: the highest-weighted of identity, deflate and gzip.

    Returns the body to send and its Content-Encoding (None: uncompressed).
    """
    best, weight = "identity", 0.0
    for part in accept.split(","):
        name, _, q = part.strip().partition(";")
        name = name.strip().lower()
        value = 1.0
        if q.strip().startswith("q="):
            try:
                value = float(q.strip()[2:])
            except ValueError:
                continue
        if name in ("identity", "deflate", "gzip") and value > weight:
            best, weight = name, value
    if best == "gzip":
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    elif best == "deflate":
        compressor = zlib.compressobj()
    else:
        return payload, None
    return compressor.compress(payload) + compressor.flush(), best


def response_head(version: str, keep_alive: bool, length: int, json_length: int | None, encoding: str | None,
                  status: int = 200) -> bytes:
    """The status line and headers of an inference response, as aiohttp would write them.

    ``version`` is the request's HTTP version ("1.1"); ``json_length`` the JSON header's length when
    binary tensor data follows it; ``encoding`` the Content-Encoding, if any.
    """
    head = f"HTTP/{version} {status} {_REASONS.get(status, 'Error')}\r\n"
    if json_length is None:
        head += "Content-Type: application/json\r\n"
    else:
        head += f"Content-Type: application/octet-stream\r\n{HEADER_LENGTH}: {json_length}\r\n"
    if encoding is not None:
        head += f"Content-Encoding: {encoding}\r\n"
    # The same Connection header rules as aiohttp's StreamResponse.
    if keep_alive:
        if version == "1.0":
            head += "Connection: keep-alive\r\n"
    elif version == "1.1":
        head += "Connection: close\r\n"
    return f"{head}Content-Length: {length}\r\nDate: {rfc822_formatted_time()}\r\n\r\n".encode()


def encode_answer(core: Any, result: Any, decoded: Any, accept: str | None) -> tuple[bytes, int | None, str | None]:
    """An inference result as the response body: ``(payload, json_length, content_encoding)``.

    ``result`` is an :class:`~nbserve.serving.core.InferResult`; ``decoded`` the request
    (:class:`~nbserve.serving.protocol.InferRequest`); ``accept`` its Accept-Encoding header.
    """
    batched = bool(decoded.classification) and core.model_config(result.model_name, result.model_version).max_batch_size > 0
    payload, json_length = encode_response(result, decoded, batched=batched)
    encoding = None
    if accept and len(payload) >= COMPRESS_MIN_BYTES:
        payload, encoding = compress(payload, accept)
    return payload, json_length, encoding


def internal_error_message(method: str, path: str, exc: BaseException) -> str:
    """The 500 message for an unexpected exception: a bug in nbserve, reported with its type."""
    return (f"internal server error while handling {method} {path}: {type(exc).__name__}: {exc}. "
            "This is a bug in nbserve; please report it with this message")


class _Head:
    """httptools' callbacks for one request head: the URL and the headers the lane looks at."""

    __slots__ = ("url", "headers", "complete", "path")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.complete = False
        self.path: re.Match[bytes] | None = None  # the inference path's match, once qualified

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.complete = True


class FastLaneConnections:
    """The fast-lane connections of one endpoint, for a clean shutdown."""

    def __init__(self) -> None:
        self.lanes: set[FastLane] = set()
        self.closing = False
        self.answered = 0  # requests answered in the fast lane (the rest went to aiohttp)

    async def close(self, timeout_s: float) -> None:
        """Close idle lanes now and busy ones after their answer; wait (bounded) for all of them."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for lane in list(self.lanes):
            lane.close_when_idle()
        while self.lanes and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for lane in list(self.lanes):
            lane.abort()


class FastLane(asyncio.Protocol):
    """One HTTP connection: inference requests served here, the rest handed to aiohttp.

    Args:
        core: the :class:`~nbserve.serving.core.InferenceCore`.
        aiohttp_protocol: makes aiohttp's protocol for a connection handed over (``web.Server()``).
        connections: the endpoint's registry of lanes.
        max_body_bytes: larger bodies go to aiohttp, which answers 413.
        token: when set, a request without ``Authorization: Bearer <token>`` goes to aiohttp (401).
    """

    def __init__(self, core: Any, aiohttp_protocol: Callable[[], asyncio.Protocol], connections: FastLaneConnections,
                 max_body_bytes: int, token: str | None) -> None:
        self._core = core
        self._make_inner = aiohttp_protocol
        self._connections = connections
        self._max_body = max_body_bytes
        self._auth = None if token is None else f"Bearer {token}".encode()
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._buffer = bytearray()
        self._parser: Any = None
        self._head: _Head | None = None
        self._head_end = 0  # bytes of the buffer the parser has consumed (the head of the current request)
        self._busy = False  # a request is queued on the core; later bytes wait for its answer
        self._serving = False  # inside _serve_buffered (an answer written there must not re-enter it)
        self._close_after = False
        self._write_paused = False  # the client reads its answers slowly
        self._buffer_full = False  # the client sent more than one request can hold while we answer
        self._reading_paused = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._connections.lanes.add(self)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._buffer += data
        if not self._busy:
            self._serve_buffered()
        elif len(self._buffer) > self._max_body + _MAX_HEAD_BYTES:  # pipelined beyond reason: wait
            self._buffer_full = True
            self._update_reading()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.lanes.discard(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
        self._transport = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()
        else:  # a slow reader: stop taking its requests meanwhile
            self._write_paused = True
            self._update_reading()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
        else:
            self._write_paused = False
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._inner is not None:
            return
        pause = self._write_paused or self._buffer_full
        if pause and not self._reading_paused:
            transport.pause_reading()
        elif not pause and self._reading_paused:
            transport.resume_reading()
        self._reading_paused = pause

    # ------------------------------------------------------------------ shutdown
    def close_when_idle(self) -> None:
        if self._inner is not None:
            return  # aiohttp's runner closes it
        if self._busy:
            self._close_after = True
        elif self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._inner is None and self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------------ requests
    def _serve_buffered(self) -> None:
        """Serve the complete requests in the buffer, one at a time, or hand the connection over."""
        self._serving = True
        try:
            while (not self._busy and self._inner is None and self._transport is not None
                   and not self._transport.is_closing() and self._next_request()):
                pass
        finally:
            self._serving = False

    def _next_request(self) -> bool:
        """Start the next buffered request; False when it is not all here yet (or was handed over)."""
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD_BYTES:
                    self._hand_over()
                return False
            # A new parser per request: it is fed the head only (the lane frames the body itself,
            # by Content-Length), so it never sees where one message ends and the next begins.
            head = _Head()
            self._parser = httptools.HttpRequestParser(head)
            try:
                self._parser.feed_data(bytes(buffer[: end + 4]))
            except httptools.HttpParserError:
                head.complete = False
            if not head.complete or not self._qualifies(head):
                self._hand_over()
                return False
            self._head, self._head_end = head, end + 4
        head = self._head
        total = self._head_end + int(head.headers[b"content-length"])
        if len(buffer) < total:
            return False  # the rest of the body is on its way
        body = buffer[self._head_end : total]  # a copy: binary inputs become writable views
        del buffer[:total]
        self._head = None
        self._start(head, body)
        return True

    def _qualifies(self, head: _Head) -> bool:
        parser = self._parser
        headers = head.headers
        if parser.get_method() != b"POST" or parser.should_upgrade():
            return False
        length = headers.get(b"content-length")
        if length is None or not length.isdigit() or int(length) > self._max_body:
            return False
        if b"transfer-encoding" in headers or b"expect" in headers:
            return False
        encoding = headers.get(b"content-encoding")
        if encoding is not None and encoding.strip().lower() != b"identity":
            return False
        if self._auth is not None:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._auth):
                return False
        head.path = _INFER_PATH.fullmatch(head.url.split(b"?", 1)[0])
        return head.path is not None

    def _start(self, head: _Head, body: bytearray) -> None:
        parser = self._parser
        version = parser.get_http_version()
        keep_alive = parser.should_keep_alive()
        match = head.path
        assert match is not None  # _qualifies matched it
        model = unquote(match.group(1).decode("latin-1"))
        served = match.group(2)
        requested = unquote(served.decode("latin-1")) if served is not None else None
        accept = head.headers.get(b"accept-encoding")
        answer = _Answer(self, version, keep_alive, accept.decode("latin-1") if accept else None, model)
        try:
            header = head.headers.get(_HEADER_LENGTH)
            header_length = None if header is None else parse_header_length(header.decode("latin-1"), len(body),
                                                                              model=model)
            decoded = decode_request(body, header_length, model=model)
            answer.decoded = decoded
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(answer.done)
            answer.loaded = self._core.submit(
                model, decoded.inputs, future, version=requested, outputs=decoded.outputs,
                priority=decoded.priority, timeout_us=decoded.timeout_us, parameters=decoded.parameters,
            )
        except Exception as exc:
            answer.fail(exc)
            return
        self._busy = True

    def _answered(self, data: bytes, keep_alive: bool) -> None:
        transport = self._transport
        self._busy = False
        if transport is None or transport.is_closing():
            return
        self._connections.answered += 1  # before the write: a client that has its answer sees the count
        transport.write(data)
        if self._buffer_full:
            self._buffer_full = False
            self._update_reading()
        if not keep_alive or self._close_after or self._connections.closing:
            transport.close()
            return
        if self._buffer and not self._serving:
            self._serve_buffered()

    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, starting with every byte not yet answered."""
        inner = self._make_inner()
        self._inner = inner
        self._parser = self._head = None
        self._connections.lanes.discard(self)
        transport = self._transport
        if transport is None:
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        inner.connection_made(transport)
        if self._write_paused:  # aiohttp takes over the flow control where the lane was
            inner.pause_writing()
        pending, self._buffer = bytes(self._buffer), bytearray()
        if pending:
            inner.data_received(pending)


class _Answer:
    """Builds and writes the answer to one fast-lane request when its future is done."""

    __slots__ = ("lane", "version", "keep_alive", "accept", "model", "decoded", "loaded")

    def __init__(self, lane: FastLane, version: str, keep_alive: bool, accept: str | None, model: str) -> None:
        self.lane = lane
        self.version = version
        self.keep_alive = keep_alive
        self.accept = accept
        self.model = model
        self.decoded: Any = None
        self.loaded: Any = None

    def done(self, future: asyncio.Future) -> None:
        if future.cancelled():
            self.fail(ModelNotReady("the server stopped before answering", model=self.model,
                                    hint="send the request again"))
            return
        error = future.exception()
        if error is not None:
            self.fail(error)
            return
        try:
            result = InferResult(self.model, self.loaded.version, future.result(), self.decoded.id)
            payload, json_length, encoding = encode_answer(self.lane._core, result, self.decoded, self.accept)
        except Exception as exc:
            self.fail(exc)
            return
        head = response_head(self.version, self.keep_alive, len(payload), json_length, encoding)
        self.lane._answered(head + payload, self.keep_alive)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, NbserveError):
            status, message = exc.status_code, str(exc)
        else:
            log.exception("unexpected error in POST /v2/models/%s/infer", self.model, exc_info=exc)
            status = 500
            message = internal_error_message("POST", f"/v2/models/{self.model}/infer", exc)
        body = error_body(message)
        self.lane._answered(response_head(self.version, self.keep_alive, len(body), None, None, status) + body,
                            self.keep_alive)
