"""The v2 REST frontend end to end: real models, a real server on 127.0.0.1, the real tritonclient.

Every endpoint is called through ``tritonclient.http`` (sync, and ``tritonclient.http.aio`` through a
small synchronous adapter); bodies tritonclient cannot produce (malformed JSON, wrong binary lengths)
go over a raw socket. After every error the server must keep serving.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

import nbserve
from nbserve import _tritonserver
from nbserve.registry import Registry
from nbserve.repository import write_repository
from nbserve.serving.http import config_to_json
from nbserve.serving.protocol import HEADER_LENGTH
from nbserve.tensors import DTYPES, TensorSpec

NUMERIC = [name for name in DTYPES if name not in ("BYTES",)]


# ----------------------------------------------------------------------------- models and servers
def _identity(x):
    return x


def _raises(x):
    raise ValueError("the model is broken on purpose")


class Gate:
    """A model that blocks until released: fills the queue deterministically."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, x):
        self.entered.set()
        self.open.wait(30)
        return x


def _in_place(x):
    x *= 10  # models may change their inputs in place, as in Triton's Python backend
    return x


def _multi(x):
    rows = x.shape[0]
    return {
        "scores": x,
        "label": np.array([b"cat"] * rows, dtype=object).reshape(rows, 1),
        "count": np.full((rows, 1), 3, dtype=np.int64),
    }


def build_registry(gate: Gate) -> Registry:
    reg = Registry()
    spec = TensorSpec
    reg.register(lambda x: x * 2, name="double", inputs=[spec("x", [4], "FP32")], outputs=[spec("y", [4], "FP32")],
                 max_batch_size=8, dynamic_batching={"max_queue_delay_microseconds": 100})
    for dtype in DTYPES:
        reg.register(_identity, name=f"echo_{dtype.lower()}", inputs=[spec("x", [-1], dtype)],
                     outputs=[spec("y", [-1], dtype)], max_batch_size=8)
    reg.register(_multi, name="multi", inputs=[spec("x", [3], "FP32")],
                 outputs=[spec("scores", [3], "FP32"), spec("label", [1], "BYTES"), spec("count", [1], "INT64")],
                 max_batch_size=8)
    reg.register(_raises, name="broken", inputs=[spec("x", [1], "FP32")], outputs=[spec("y", [1], "FP32")],
                 max_batch_size=8)
    reg.register(gate, name="gated", inputs=[spec("x", [1], "FP32")], outputs=[spec("y", [1], "FP32")],
                 max_batch_size=1, dynamic_batching={
                     "priority_levels": 2, "default_priority_level": 2,
                     "default_queue_policy": {"max_queue_size": 1, "allow_timeout_override": True},
                 })
    reg.register(lambda x: x + 1, name="swap", inputs=[spec("x", [1], "FP32")], outputs=[spec("y", [1], "FP32")],
                 max_batch_size=4, dynamic_batching={"max_queue_delay_microseconds": 10})
    reg.register(_in_place, name="in_place", inputs=[spec("x", [2], "FP32")], outputs=[spec("y", [2], "FP32")],
                 max_batch_size=8)
    reg.register(lambda x: x.sum().reshape(1), name="unbatched", inputs=[spec("x", [2, 2], "INT32")],
                 outputs=[spec("y", [1], "INT32")], max_batch_size=0)
    return reg


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module")
def server(gate):
    reg = build_registry(gate)
    server = nbserve.serve(reg, grpc=False, metrics=False)
    yield server
    gate.open.set()
    server.stop()
    reg.clear()


class AioClient:
    """tritonclient.http.aio behind synchronous calls, on its own event loop."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(self._make(url))

    @staticmethod
    async def _make(url: str) -> aioclient.InferenceServerClient:
        return aioclient.InferenceServerClient(url)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            return self.loop.run_until_complete(method(*args, **kwargs))

        return call

    def gather(self, calls: list) -> list:
        async def run():
            return await asyncio.gather(*(getattr(self.client, n)(*a, **k) for n, a, k in calls),
                                        return_exceptions=True)

        return self.loop.run_until_complete(run())

    def run(self, scenario) -> Any:
        return self.loop.run_until_complete(scenario(self.client))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture(params=["sync", "aio"])
def client(request, server):
    c = httpclient.InferenceServerClient(server.http_address) if request.param == "sync" else AioClient(server.http_address)
    yield c
    c.close()


@pytest.fixture
def sync_client(server):
    c = httpclient.InferenceServerClient(server.http_address)
    yield c
    c.close()


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    item = httpclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def assert_serving(client) -> None:
    """The server still answers inference after an error."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("double", [infer_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


def raw(server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, Any, dict]:
    request = urllib.request.Request(f"{server.http_url}{path}", data=body if method != "GET" else None,
                                     method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, content, hdrs = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, content, hdrs = exc.code, exc.read(), dict(exc.headers)
    try:
        value = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        value = content
    return status, value, hdrs


def assert_error(exc: InferenceServerException, status: int, *fragments: str) -> None:
    assert exc.status() == str(status), (exc.status(), exc.message())
    for fragment in fragments:
        assert fragment in exc.message(), (fragment, exc.message())


# ----------------------------------------------------------------------------- health and metadata
def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "nbserve" and "binary_tensor_data" in meta["extensions"]
    assert set(meta["extensions"]) >= {"statistics", "model_configuration", "model_repository", "classification"}


def test_model_metadata_and_readiness(client):
    meta = client.get_model_metadata("double")
    assert meta == {
        "name": "double", "versions": ["1"], "platform": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert client.get_model_metadata("double", "1") == meta
    assert client.get_model_metadata("unbatched")["inputs"][0]["shape"] == [2, 2]
    assert client.is_model_ready("double") and client.is_model_ready("double", "1")
    assert not client.is_model_ready("double", "7")
    assert not client.is_model_ready("no_such_model")


def test_model_readiness_answers_4xx_with_the_reason(server):
    status, body, _ = raw(server, "GET", "/v2/models/no_such_model/ready")
    assert status == 404 and "unknown model" in body["error"]
    status, body, _ = raw(server, "GET", "/v2/models/double/versions/7/ready")
    assert status == 404 and "version" in body["error"]


def test_model_config_is_triton_json(client, server):
    config = client.get_model_config("double")
    assert config == config_to_json(server.core.model_config("double"))
    assert config["name"] == "double" and config["max_batch_size"] == 8 and config["backend"] == "python"
    assert config["input"] == [{
        "name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4], "is_shape_tensor": False,
        "allow_ragged_batch": False, "optional": False, "is_non_linear_format_io": False,
    }]
    # int64 fields are JSON numbers, as perf_analyzer parses them.
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert client.get_model_config("double", "1") == config


def test_config_with_queue_policy_renders_int64_as_numbers(client):
    config = client.get_model_config("gated")
    policy = config["dynamic_batching"]["default_queue_policy"]
    assert policy["max_queue_size"] == 1 and policy["default_timeout_microseconds"] == 0
    assert policy["allow_timeout_override"] is True and policy["timeout_action"] == "REJECT"


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)],
                         ids=["bin-bin", "json-json", "bin-json", "json-bin"])
def test_every_numeric_type(client, dtype, binary_in, binary_out):
    if dtype == "BF16" and (not binary_in or not binary_out):
        pytest.skip("tritonclient sends and reads BF16 in binary only")
    rng = np.random.default_rng(0)
    if dtype == "BOOL":
        x = rng.integers(0, 2, (3, 5)).astype(bool)
    elif dtype == "BF16":
        x = rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16)
    elif dtype.startswith("FP"):
        x = rng.standard_normal((3, 5)).astype(DTYPES[dtype].numpy)
    else:
        info = np.iinfo(DTYPES[dtype].numpy)
        x = rng.integers(info.min, info.max, (3, 5), dtype=DTYPES[dtype].numpy, endpoint=True)
    result = client.infer(f"echo_{dtype.lower()}", [infer_input("x", x, dtype, binary_in)],
                          outputs=[httpclient.InferRequestedOutput("y", binary_data=binary_out)])
    y = result.as_numpy("y")
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, x)
    output = result.get_output("y")
    assert output["datatype"] == dtype and ("parameters" in output) == binary_out


@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)],
                         ids=["bin-bin", "json-json", "bin-json", "json-bin"])
def test_bytes_tensors(client, binary_in, binary_out):
    x = np.array([[b"hello", b"", "naïve".encode()], [b"a" * 300, b"b", b"c"]], dtype=object)
    result = client.infer("echo_bytes", [infer_input("x", x, "BYTES", binary_in)],
                          outputs=[httpclient.InferRequestedOutput("y", binary_data=binary_out)])
    y = result.as_numpy("y")
    assert y.shape == (2, 3)
    got = [v.encode() if isinstance(v, str) else v for v in y.reshape(-1)]
    assert got == list(x.reshape(-1))


def test_binary_bytes_that_are_not_text(client):
    x = np.array([[b"\xff\x00\xfe"]], dtype=object)
    result = client.infer("echo_bytes", [infer_input("x", x, "BYTES")])
    assert result.as_numpy("y").tolist() == [[b"\xff\x00\xfe"]]
    with pytest.raises(InferenceServerException) as info:  # JSON cannot carry these bytes
        client.infer("echo_bytes", [infer_input("x", x, "BYTES")],
                     outputs=[httpclient.InferRequestedOutput("y", binary_data=False)])
    assert_error(info.value, 400, "not UTF-8", "binary_data=True")
    assert_serving(client)


def test_default_outputs_are_binary_and_all_returned(client):
    x = np.ones((2, 3), np.float32)
    result = client.infer("multi", [infer_input("x", x, "FP32")])
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["scores", "label", "count"]
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    assert result.as_numpy("label").tolist() == [[b"cat"], [b"cat"]]
    assert result.as_numpy("count").tolist() == [[3], [3]]


def test_requested_output_subset_and_id(client):
    x = np.ones((1, 3), np.float32)
    result = client.infer("multi", [infer_input("x", x, "FP32")], request_id="req-42",
                          outputs=[httpclient.InferRequestedOutput("count")])
    response = result.get_response()
    assert response["id"] == "req-42" and response["model_name"] == "multi" and response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["count"]
    assert result.as_numpy("count").tolist() == [[3]]


def test_classification_extension(client):
    x = np.array([[0.1, 0.7, 0.2], [3, 1, 2]], np.float32)
    result = client.infer("multi", [infer_input("x", x, "FP32")],
                          outputs=[httpclient.InferRequestedOutput("scores", class_count=2)])
    assert result.as_numpy("scores").tolist() == [[b"0.700000:1", b"0.200000:2"], [b"3.000000:0", b"2.000000:2"]]


def test_models_may_change_their_inputs_in_place(client):
    for binary in (True, False):
        x = np.ones((1, 2), np.float32)
        result = client.infer("in_place", [infer_input("x", x, "FP32", binary)])
        assert result.as_numpy("y").tolist() == [[10.0, 10.0]]


def test_unbatched_model_and_explicit_version(client):
    x = np.array([[1, 2], [3, 4]], np.int32)
    result = client.infer("unbatched", [infer_input("x", x, "INT32", binary=False)], model_version="1")
    assert result.as_numpy("y").tolist() == [10]


def test_custom_parameters_and_priority_pass_through(client, gate):
    gate.open.set()
    x = np.ones((1, 1), np.float32)
    result = client.infer("gated", [infer_input("x", x, "FP32")], priority=1, parameters={"note": "hi", "n": 2})
    assert result.as_numpy("y").tolist() == [[1.0]]
    with pytest.raises(InferenceServerException) as info:
        client.infer("gated", [infer_input("x", x, "FP32")], priority=5)
    assert_error(info.value, 400, "priority out of range", "1..2")
    assert_serving(client)


def test_compressed_request_and_response(sync_client):
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)  # responses over 1 KiB
    for request_algorithm, response_algorithm in (("gzip", "gzip"), ("deflate", "deflate"), ("gzip", None)):
        result = sync_client.infer("echo_fp32", [infer_input("x", x, "FP32")],
                                   request_compression_algorithm=request_algorithm,
                                   response_compression_algorithm=response_algorithm)
        np.testing.assert_array_equal(result.as_numpy("y"), x)


def test_response_is_compressed_only_when_asked_and_worth_it(server):
    x = np.zeros((8, 256), np.float32)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([infer_input("x", x, "FP32")])
    headers = {HEADER_LENGTH: str(header_length), "Accept-Encoding": "gzip"}
    request = urllib.request.Request(f"{server.http_url}/v2/models/echo_fp32/infer", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Type"] == "application/octet-stream"
        content = gzip.decompress(response.read())
        length = int(response.headers[HEADER_LENGTH])
    parsed = httpclient.InferenceServerClient.parse_response_body(content, header_length=length)
    np.testing.assert_array_equal(parsed.as_numpy("y"), x)
    small = np.zeros((1, 1), np.float32)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([infer_input("x", small, "FP32")])
    status, _, hdrs = raw(server, "POST", "/v2/models/echo_fp32/infer", body,
                          {HEADER_LENGTH: str(header_length), "Accept-Encoding": "gzip"})
    assert status == 200 and "Content-Encoding" not in hdrs


def test_json_only_request_gets_json_response(server):
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    status, value, headers = raw(server, "POST", "/v2/models/double/infer", body)
    assert status == 200 and headers["Content-Type"] == "application/json" and HEADER_LENGTH not in headers
    assert value == {"model_name": "double", "model_version": "1",
                     "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [2.0, 4.0, 6.0, 8.0]}]}


def test_many_concurrent_requests_batch_and_all_answer(server):
    client = AioClient(server.http_address)
    try:
        xs = [np.full((1, 4), i, np.float32) for i in range(64)]
        results = client.gather([("infer", ("double", [infer_input("x", x, "FP32")]), {}) for x in xs])
    finally:
        client.close()
    for x, result in zip(xs, results):
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


# ----------------------------------------------------------------------------- statistics and repository
def test_statistics(client):
    client.infer("double", [infer_input("x", np.ones((3, 4), np.float32), "FP32")])
    stats = client.get_inference_statistics("double")
    (entry,) = stats["model_stats"]
    assert entry["name"] == "double" and entry["version"] == "1" and entry["inference_count"] >= 3
    assert set(entry["inference_stats"]) >= {"success", "fail", "queue", "compute_input", "compute_infer",
                                             "compute_output", "cache_hit", "cache_miss"}
    assert client.get_inference_statistics("double", "1")["model_stats"][0]["version"] == "1"
    names = {e["name"] for e in client.get_inference_statistics()["model_stats"]}
    assert {"double", "multi", "echo_fp32"} <= names
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("no_such_model")
    assert_error(info.value, 404, "unknown model")


def test_repository_index_load_and_unload(client):
    index = client.get_model_repository_index()
    assert {"name": "swap", "version": "1", "state": "READY", "reason": ""} in index
    x = np.ones((1, 1), np.float32)
    client.unload_model("swap")
    try:
        assert not client.is_model_ready("swap")
        assert {"name": "swap", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in \
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException) as info:
            client.infer("swap", [infer_input("x", x, "FP32")])
        assert_error(info.value, 503, "model 'swap'", "unloaded", "/v2/repository/models/swap/load")
        assert_serving(client)
    finally:
        client.load_model("swap")
    assert client.is_model_ready("swap")
    assert client.infer("swap", [infer_input("x", x, "FP32")]).as_numpy("y").tolist() == [[2.0]]


def test_repository_index_ready_filter(server):
    status, value, _ = raw(server, "POST", "/v2/repository/index", orjson.dumps({"ready": True}))
    assert status == 200 and all(e["state"] == "READY" for e in value)
    status, value, _ = raw(server, "POST", "/v2/repository/index", b'{"ready": 3}')
    assert status == 400 and "'ready' must be true or false" in value["error"]


def test_load_with_config_override(client):
    config = client.get_model_config("swap")
    config["dynamic_batching"]["max_queue_delay_microseconds"] = 250
    client.load_model("swap", config=json.dumps(config))
    assert client.get_model_config("swap")["dynamic_batching"]["max_queue_delay_microseconds"] == 250
    x = np.ones((1, 1), np.float32)
    assert client.infer("swap", [infer_input("x", x, "FP32")]).as_numpy("y").tolist() == [[2.0]]


def test_load_errors_name_the_fix(client, server):
    with pytest.raises(InferenceServerException) as info:
        client.load_model("no_such_model")
    assert_error(info.value, 404, "unknown model")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("swap", config="{not json")
    assert_error(info.value, 400, "not valid JSON")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("swap", config="{}", files={"file:1/model.py": b"print()"})
    assert_error(info.value, 400, "file:1/model.py", "nbserve.register")
    status, value, _ = raw(server, "POST", "/v2/repository/myrepo/models/swap/load", b"")
    assert status == 400 and "repository_name" in value["error"]
    assert_serving(client)


# ----------------------------------------------------------------------------- errors
def test_unknown_model_and_version(client):
    x = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("doubel", [infer_input("x", x, "FP32")])
    assert_error(info.value, 404, "model 'doubel'", "unknown model", "did you mean 'double'")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", x, "FP32")], model_version="9")
    assert_error(info.value, 404, "model 'double'", "expected one of [1]", "leave the version out")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert_error(info.value, 404, "unknown model")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("no_such_model")
    assert_error(info.value, 404, "unknown model")
    assert_serving(client)


def test_wrong_dtype_shape_and_names(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", np.ones((1, 4), np.float64), "FP64")])
    assert_error(info.value, 400, "tensor 'x'", "model 'double'", "expected FP32", "got FP64", 'x.astype("float32")')
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", np.ones((1, 5), np.float32), "FP32")])
    assert_error(info.value, 400, "tensor 'x'", "wrong shape", "got [1, 5]", "reshape")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("z", np.ones((1, 4), np.float32), "FP32")])
    assert_error(info.value, 400, "unexpected input 'z'", "model 'double'")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", np.ones((1, 4), np.float32), "FP32")],
                     outputs=[httpclient.InferRequestedOutput("nope")])
    assert_error(info.value, 400, "unknown output 'nope'", "expected ['y']")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", np.ones((9, 4), np.float32), "FP32")])
    assert_error(info.value, 400, "max_batch_size", "at most 8 rows", "got 9")
    assert_serving(client)


def test_model_that_raises_is_500(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("broken", [infer_input("x", np.ones((1, 1), np.float32), "FP32")])
    assert_error(info.value, 500, "model 'broken'", "ValueError", "broken on purpose", "fix the model code")
    assert_serving(client)


def test_busy_queue_is_503_and_queue_timeout(server, gate):
    gate.open.clear()
    gate.entered.clear()
    x = np.ones((1, 1), np.float32)

    def first_request():
        with httpclient.InferenceServerClient(server.http_address) as c:
            c.infer("gated", [infer_input("x", x, "FP32")])

    async def scenario(client):
        # One request runs in the model; then one queued request with a 1 us timeout (which
        # allow_timeout_override lets expire) and two more compete for the one queue slot.
        tasks = [asyncio.ensure_future(client.infer("gated", [infer_input("x", x, "FP32")], **kw))
                 for kw in ({"timeout": 1}, {}, {})]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=30)  # a refusal
        gate.open.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first = threading.Thread(target=first_request)
    first.start()
    client = AioClient(server.http_address)
    try:
        assert gate.entered.wait(30)
        results = client.run(scenario)
    finally:
        gate.open.set()
        first.join(30)
        client.close()
    errors = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(errors) >= 2, results  # at most one request fits the queue, and it timed out or ran
    for error in errors:
        assert_error(error, 503, "model 'gated'")
    assert all("queue" in e.message() for e in errors), [e.message() for e in errors]


def test_malformed_bodies_are_400_and_name_the_fix(server, sync_client):
    def binary(size: int, data: int) -> tuple[bytes, dict]:
        header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                           "parameters": {"binary_data_size": size}}]})
        return header + b"\0" * data, {HEADER_LENGTH: str(len(header))}

    cases = [
        (b'{"inputs": [', {}, "not valid JSON"),
        (b'{"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1, 4], "data": [1, 2, 3, 4]}]}', {},
         "unknown datatype 'FLOAT'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}', {},
         "expected 4 values for shape [1, 4], got 3 values"),
        (*binary(16, 8), "body ends before this input's binary data"),
        (*binary(8, 8), "expected 16 bytes for FP32 [1, 4], got 8 bytes"),
        (*binary(16, 20), "more binary data than the inputs declare"),
        (b'{"inputs": []}', {HEADER_LENGTH: "999"}, "Inference-Header-Content-Length header must be"),
        (binary(16, 16)[0], {}, "set the Inference-Header-Content-Length header to the JSON's byte length"),
        (binary(16, 16)[0], {HEADER_LENGTH: "20"}, "not valid JSON"),
    ]
    for body, headers, fragment in cases:
        status, value, hdrs = raw(server, "POST", "/v2/models/double/infer", body, headers)
        assert status == 400, (fragment, status, value)
        assert hdrs["Content-Type"] == "application/json"
        assert fragment in value["error"] and "model 'double'" in value["error"], value
        assert_serving(sync_client)


def test_unsupported_content_encoding_is_415(server, sync_client):
    status, value, _ = raw(server, "POST", "/v2/models/double/infer", b"{}", {"Content-Encoding": "compress"})
    assert status == 415 and "unsupported Content-Encoding 'compress'" in value["error"]
    assert "gzip, deflate or identity" in value["error"]
    status, value, _ = raw(server, "POST", "/v2/models/double/infer", b"not gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "cannot be read (Can not decode content-encoding: gzip)" in value["error"]
    assert "send a valid gzip body" in value["error"]
    assert_serving(sync_client)


def test_unknown_routes_and_methods(server, sync_client):
    status, value, _ = raw(server, "GET", "/v3/whatever")
    assert status == 404 and "/v2" in value["error"]
    status, value, _ = raw(server, "GET", "/v2/models/double/infer")
    assert status == 405 and "Method Not Allowed" in value["error"]
    status, value, _ = raw(server, "POST", "/v2/systemsharedmemory/region/r/register", b"{}")
    assert status == 400 and "shared-memory tensors are not supported" in value["error"]
    assert sync_client.get_system_shared_memory_status() == []
    with pytest.raises(InferenceServerException) as info:
        sync_client.get_trace_settings()
    assert_error(info.value, 400, "tracing is not supported")
    assert_serving(sync_client)


# ----------------------------------------------------------------------------- limits and auth
@pytest.fixture(scope="module")
def guarded_server(gate):
    reg = Registry()
    reg.register(lambda x: x * 2, name="double", inputs=[TensorSpec("x", [-1], "FP32")],
                 outputs=[TensorSpec("y", [-1], "FP32")], max_batch_size=8)
    server = nbserve.Server(reg, grpc=False, metrics=False, token="s3cret", max_body_bytes=4096).start()
    yield server
    server.stop()
    reg.clear()


AUTH = {"Authorization": "Bearer s3cret"}  # tritonclient adds to the headers dict it is given: pass copies


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_bearer_token(guarded_server, kind):
    client = (httpclient.InferenceServerClient(guarded_server.http_address) if kind == "sync"
              else AioClient(guarded_server.http_address))
    try:
        assert client.is_server_live() and client.is_server_ready()  # health needs no token
        with pytest.raises(InferenceServerException) as info:
            client.get_server_metadata()
        assert_error(info.value, 401, "bearer token is missing", "Authorization: Bearer <token>")
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("double", headers={"Authorization": "Bearer wrong"})
        assert_error(info.value, 401, "does not match")
        x = np.ones((1, 4), np.float32)
        with pytest.raises(InferenceServerException) as info:
            client.infer("double", [infer_input("x", x, "FP32")])
        assert_error(info.value, 401, "unauthorized")
        assert client.get_server_metadata(headers=dict(AUTH))["name"] == "nbserve"
        result = client.infer("double", [infer_input("x", x, "FP32")], headers=dict(AUTH))
        assert result.as_numpy("y").tolist() == [[2.0] * 4]
    finally:
        client.close()
    status, _, headers = raw(guarded_server, "GET", "/v2")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")


def test_body_over_limit_is_413(guarded_server):
    client = httpclient.InferenceServerClient(guarded_server.http_address)
    try:
        big = np.ones((1, 2048), np.float32)  # 8 KiB > 4 KiB
        with pytest.raises(InferenceServerException) as info:
            client.infer("double", [infer_input("x", big, "FP32")], headers=dict(AUTH))
        assert_error(info.value, 413, "model 'double'", "too large", "at most 4096 bytes", "max_body_bytes=")
        with pytest.raises(InferenceServerException) as info:  # the limit holds after decompression too
            client.infer("double", [infer_input("x", np.zeros((1, 4096), np.float32), "FP32")], headers=dict(AUTH),
                         request_compression_algorithm="gzip")
        assert_error(info.value, 413, "too large")
        small = np.ones((1, 4), np.float32)
        assert client.infer("double", [infer_input("x", small, "FP32")], headers=dict(AUTH)).as_numpy("y").shape == (1, 4)
    finally:
        client.close()


def test_endpoint_closes_its_port(gate):
    import socket

    reg = Registry()
    reg.register(_identity, name="echo", inputs=[TensorSpec("x", [-1], "FP32")],
                 outputs=[TensorSpec("y", [-1], "FP32")], max_batch_size=8)
    server = nbserve.Server(reg, grpc=False, metrics=False).start()
    port = server.http_port
    assert httpclient.InferenceServerClient(server.http_address).is_server_live()
    server.stop()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    reg.clear()


# ----------------------------------------------------------------------------- against the real Triton
_triton_reason = _tritonserver.unavailable_reason()


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same model behind nbserve and behind the real tritonserver (nbserve's own export)."""
    if _triton_reason is not None:
        pytest.skip(f"real tritonserver unavailable: {_triton_reason}")
    reg = Registry()
    reg.register(lambda x: x * 2, name="twin", inputs=[TensorSpec("x", [4], "FP32")],
                 outputs=[TensorSpec("y", [4], "FP32")], max_batch_size=8,
                 dynamic_batching={"max_queue_delay_microseconds": 100})
    repository = write_repository(tmp_path_factory.mktemp("twins") / "repo", reg)
    ours = nbserve.Server(reg, grpc=False, metrics=False).start()
    try:
        with _tritonserver.TritonServer(repository) as triton:
            yield ours, triton
    finally:
        ours.stop()
        reg.clear()


def _get(address: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://{address}{path}", data=body, headers=headers or {},
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _same_types(ours: Any, theirs: Any, path: str = "") -> None:
    """Every key both servers return has the same JSON type (numbers stay numbers, lists stay lists)."""
    assert type(ours) is type(theirs), (path, ours, theirs)
    if isinstance(ours, dict):
        for key in ours.keys() & theirs.keys():
            _same_types(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(ours, list):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _same_types(a, b, f"{path}[{i}]")


@pytest.mark.parametrize("path", ["/v2/models/twin", "/v2/models/twin/versions/1"])
@pytest.mark.triton
@pytest.mark.slow
def test_metadata_identical_to_triton(twins, path):
    ours, triton = twins
    assert orjson.loads(_get(ours.http_address, path)[2]) == orjson.loads(_get(triton.http_address, path)[2])


@pytest.mark.triton
@pytest.mark.slow
def test_config_and_statistics_have_triton_types(twins):
    ours, triton = twins
    for path in ("/v2/models/twin/config", "/v2/models/twin/stats", "/v2/models/stats"):
        mine, theirs = (orjson.loads(_get(s.http_address, path)[2]) for s in (ours, triton))
        _same_types(mine, theirs, path)
        if path.endswith("config"):  # Triton adds autofilled fields; everything we send it sends too
            assert set(mine) <= set(theirs), set(mine) - set(theirs)
            for key in ("name", "max_batch_size", "input", "output", "backend"):
                assert mine[key] == theirs[key], key


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.triton
@pytest.mark.slow
def test_infer_responses_are_byte_identical_to_triton(twins, binary):
    ours, triton = twins
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [infer_input("x", x, "FP32", binary)], request_id="same",
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
    headers = {HEADER_LENGTH: str(header_length)} if header_length is not None else {}
    (status_a, headers_a, a), (status_b, headers_b, b) = (
        _get(s.http_address, "/v2/models/twin/infer", body, headers) for s in (ours, triton))
    assert status_a == status_b == 200 and a == b
    for name in ("Content-Type", HEADER_LENGTH):
        assert headers_a.get(name) == headers_b.get(name)


@pytest.mark.triton
@pytest.mark.slow
def test_errors_have_triton_shape(twins):
    ours, triton = twins
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    for path, payload in (("/v2/models/nope", None), ("/v2/models/twin/infer", body)):
        (status_a, _, a), (status_b, _, b) = (_get(s.http_address, path, payload) for s in (ours, triton))
        assert status_a == status_b and set(orjson.loads(a)) == set(orjson.loads(b)) == {"error"}


@pytest.mark.triton
@pytest.mark.slow
def test_perf_analyzer_measures_nbserve_unchanged(twins):
    path = _tritonserver.perf_analyzer_path(fetch=False)
    if path is None:
        pytest.skip(f"perf_analyzer unavailable: {_tritonserver.perf_analyzer_unavailable_reason()}")
    ours, _ = twins
    out = Path(tempfile.mkdtemp()) / "pa.csv"
    done = subprocess.run(
        [str(path), "-v", "-m", "twin", "-u", ours.http_address, "-i", "http", "--concurrency-range", "4:4",
         "--measurement-interval", "500", "--stability-percentage", "999", "--max-trials", "10", "-f", str(out)],
        env=_tritonserver.perf_analyzer_env(), capture_output=True, text=True, timeout=120,
    )
    log = done.stdout[-3000:] + done.stderr[-2000:]
    if done.returncode != 0:
        # On a loaded machine perf_analyzer may not call a measurement stable; it must still have
        # measured (every pass talks to the server through metadata, config, infer and statistics).
        assert "Failed to obtain stable measurement" in log and "Pass [1] throughput" in log, log
        assert "Pass [1] throughput: 0 " not in log, log
        return
    with open(out) as f:
        row = next(csv.DictReader(f))
    assert float(row["Inferences/Second"]) > 0, log
    # perf_analyzer read the server-side statistics extension for its breakdown.
    assert "Server:" in done.stdout and "Inference count" in done.stdout, log
