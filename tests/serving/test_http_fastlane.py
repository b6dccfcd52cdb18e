"""The HTTP inference fast lane: the same answers as aiohttp, in order, handing over cleanly.

Each test runs a real HTTP endpoint (``start_http``) on 127.0.0.1 in a loop thread and talks to it
over raw sockets (to control pipelining and HTTP versions) or with tritonclient.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from nbserve.registry import Registry
from nbserve.serving.core import InferenceCore
from nbserve.serving.http import start_http
from nbserve.tensors import TensorSpec


class Gate:
    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, x):
        self.entered.set()
        self.open.wait(30)
        return x


class Endpoint:
    """A core and an HTTP endpoint on their own loop thread."""

    def __init__(self, registry: Registry, **options) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.core = InferenceCore(registry)
        self.core.start()
        self.endpoint = self.call(start_http(self.core, "127.0.0.1", 0, **options))
        self.port = self.endpoint.port

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    @property
    def answered(self) -> int:
        lanes = self.endpoint._lanes
        return lanes.answered if lanes is not None else 0

    def close(self) -> None:
        self.call(self.endpoint.close())
        self.core.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def build_registry(gate: Gate | None = None) -> Registry:
    reg = Registry()
    reg.register(lambda x: x * 2, name="double", inputs=[TensorSpec("x", [4], "FP32")],
                 outputs=[TensorSpec("y", [4], "FP32")], max_batch_size=8,
                 dynamic_batching={"max_queue_delay_microseconds": 100})
    if gate is not None:
        reg.register(gate, name="gated", inputs=[TensorSpec("x", [1], "FP32")],
                     outputs=[TensorSpec("y", [1], "FP32")], max_batch_size=1)
    return reg


@pytest.fixture
def endpoint():
    ep = Endpoint(build_registry())
    yield ep
    ep.close()


def infer_request(values: list[float], *, version: str = "1.1", extra: str = "", path: str = "/v2/models/double/infer",
                  body: bytes | None = None) -> bytes:
    if body is None:
        body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": values}]})
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_responses(sock: socket.socket, count: int, timeout_s: float = 10) -> list[tuple[int, dict, bytes]]:
    """Read ``count`` HTTP responses (Content-Length framed) from ``sock``."""
    sock.settimeout(timeout_s)
    data = b""
    responses = []
    while len(responses) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            lines = data[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers.get("content-length", 0))
            if len(data) >= end + 4 + length:
                responses.append((int(lines[0].split()[1]), headers, data[end + 4 : end + 4 + length]))
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return responses


def outputs(body: bytes) -> list[float]:
    return orjson.loads(body)["outputs"][0]["data"]


def test_pipelined_requests_are_answered_in_order_across_the_hand_over(endpoint):
    payload = (infer_request([1, 2, 3, 4]) + infer_request([5, 6, 7, 8])
               + b"GET /v2/models/double HTTP/1.1\r\nHost: x\r\n\r\n" + infer_request([9, 9, 9, 9]))
    with socket.create_connection(("127.0.0.1", endpoint.port)) as sock:
        sock.sendall(payload)
        answers = read_responses(sock, 4)
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert outputs(answers[0][2]) == [2, 4, 6, 8]
    assert outputs(answers[1][2]) == [10, 12, 14, 16]
    assert orjson.loads(answers[2][2])["name"] == "double"
    assert outputs(answers[3][2]) == [18, 18, 18, 18]  # served by aiohttp after the hand-over
    assert endpoint.answered == 2


def test_a_request_split_across_packets_is_served(endpoint):
    request = infer_request([1, 1, 1, 1])
    with socket.create_connection(("127.0.0.1", endpoint.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(request), 7):
            sock.sendall(request[i : i + 7])
            time.sleep(0.001)  # separate segments, so the lane sees partial heads and bodies
        (status, _, body), = read_responses(sock, 1)
    assert status == 200 and outputs(body) == [2, 2, 2, 2]
    assert endpoint.answered == 1


def test_fast_lane_answers_as_aiohttp_does(monkeypatch):
    """Headers and bodies are the same with and without the lane (Date aside), errors included."""
    requests = [
        infer_request([1, 2, 3, 4]),
        infer_request([1, 2, 3, 4], extra="Accept-Encoding: gzip\r\n"),
        infer_request([], body=b"{not json"),
        infer_request([1, 2, 3, 4], path="/v2/models/nope/infer"),
        infer_request([1, 2, 3, 4], path="/v2/models/double/versions/7/infer"),
        infer_request([1, 2, 3], extra="Connection: close\r\n"),
    ]
    seen = {}
    for lane in ("1", "0"):
        monkeypatch.setenv("NBSERVE_HTTP_FASTLANE", lane)
        ep = Endpoint(build_registry())
        try:
            answers = []
            for request in requests:
                with socket.create_connection(("127.0.0.1", ep.port)) as sock:
                    sock.sendall(request)
                    (status, headers, body), = read_responses(sock, 1)
                headers.pop("date")
                headers.pop("server", None)  # aiohttp names itself on the responses it builds
                answers.append((status, headers, body))
            seen[lane] = answers
            assert ep.answered == (len(requests) if lane == "1" else 0)
        finally:
            ep.close()
    assert [a[0] for a in seen["1"]] == [200, 200, 400, 404, 404, 400]
    assert seen["1"] == seen["0"]


def test_http_10_without_keep_alive_closes_after_the_answer(endpoint):
    with socket.create_connection(("127.0.0.1", endpoint.port)) as sock:
        sock.sendall(infer_request([1, 2, 3, 4], version="1.0"))
        (status, headers, body), = read_responses(sock, 1)
        assert status == 200 and outputs(body) == [2, 4, 6, 8]
        sock.settimeout(10)
        assert sock.recv(1) == b""  # the server closed the connection


def test_an_error_keeps_the_connection_serving(endpoint):
    with socket.create_connection(("127.0.0.1", endpoint.port)) as sock:
        sock.sendall(infer_request([], body=b'{"inputs": 3}'))
        (status, _, body), = read_responses(sock, 1)
        assert status == 400 and "double" in orjson.loads(body)["error"]
        sock.sendall(infer_request([1, 2, 3, 4]))
        (status, _, body), = read_responses(sock, 1)
        assert status == 200 and outputs(body) == [2, 4, 6, 8]
    assert endpoint.answered == 2


def test_limits_and_token_go_to_aiohttp():
    ep = Endpoint(build_registry(), max_body_bytes=96, token="s3cret")
    try:
        with socket.create_connection(("127.0.0.1", ep.port)) as sock:
            sock.sendall(infer_request([1, 2, 3, 4]))
            (status, headers, _), = read_responses(sock, 1)
        assert status == 401 and "bearer" in headers.get("www-authenticate", "").lower()
        auth = "Authorization: Bearer s3cret\r\n"
        with socket.create_connection(("127.0.0.1", ep.port)) as sock:
            sock.sendall(infer_request([1, 2, 3, 4], extra=auth, body=b"{" + b" " * 200 + b"}"))
            (status, _, body), = read_responses(sock, 1)
        assert status == 413
        before = ep.answered
        body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        assert len(body) <= 96
        with socket.create_connection(("127.0.0.1", ep.port)) as sock:
            sock.sendall(infer_request([], extra=auth, body=body))
            (status, _, answer), = read_responses(sock, 1)
        assert status == 200 and outputs(answer) == [2, 4, 6, 8]
        assert ep.answered == before + 1
    finally:
        ep.close()


def test_tritonclient_infer_goes_through_the_lane(endpoint):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{endpoint.port}")
    try:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        item = httpclient.InferInput("x", [2, 4], "FP32")
        item.set_data_from_numpy(x, binary_data=True)
        for _ in range(3):
            result = client.infer("double", [item], outputs=[httpclient.InferRequestedOutput("y", binary_data=True)])
            np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    finally:
        client.close()
    assert endpoint.answered >= 1


def test_close_answers_the_request_in_flight_then_closes_every_connection():
    gate = Gate()
    ep = Endpoint(build_registry(gate))
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [3]}]})
    idle = socket.create_connection(("127.0.0.1", ep.port))
    busy = socket.create_connection(("127.0.0.1", ep.port))
    try:
        idle.sendall(infer_request([1, 2, 3, 4]))
        assert read_responses(idle, 1)[0][0] == 200
        busy.sendall(infer_request([], path="/v2/models/gated/infer", body=body))
        assert gate.entered.wait(10)
        closing = threading.Thread(target=ep.close)
        closing.start()
        time.sleep(0.05)
        gate.open.set()
        (status, _, answer), = read_responses(busy, 1)
        assert status == 200 and outputs(answer) == [3]
        closing.join(15)
        assert not closing.is_alive()
        for sock in (idle, busy):
            sock.settimeout(10)
            assert sock.recv(1) == b""
    finally:
        gate.open.set()
        idle.close()
        busy.close()


def test_a_flood_of_pipelined_requests_waits_and_is_answered_in_order():
    """More pipelined bytes than one request may hold pause reading until the answer is out."""
    gate = Gate()
    ep = Endpoint(build_registry(gate), max_body_bytes=256)
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [5]}]})
    flood = b"".join(infer_request([i, i, i, i]) for i in range(300))  # ~60 KB behind a blocked request
    try:
        with socket.create_connection(("127.0.0.1", ep.port)) as sock:
            sock.sendall(infer_request([], path="/v2/models/gated/infer", body=body) + flood)
            assert gate.entered.wait(10)
            gate.open.set()
            answers = read_responses(sock, 301, timeout_s=30)
        assert [status for status, _, _ in answers] == [200] * 301
        assert outputs(answers[0][2]) == [5]
        assert [outputs(body)[0] for _, _, body in answers[1:]] == [2 * i for i in range(300)]
        assert ep.answered == 301
    finally:
        gate.open.set()
        ep.close()
