"""The KServe v2 gRPC frontend end to end: real models, a real server on 127.0.0.1, the real tritonclient.

Every RPC goes through ``tritonclient.grpc`` (sync) and ``tritonclient.grpc.aio`` (through a small
synchronous adapter), on both engines (the native C-core engine and grpc.aio). Messages that
tritonclient cannot produce (typed ``contents``, wrong raw lengths) go through the generated stub on a
plain ``grpc`` channel. After every error the server must keep serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import nbserve
from nbserve.registry import Registry
from nbserve.tensors import DTYPES, TensorSpec

ENGINES = ["native", "aio"]
# The native engine answers ModelInfer off the loop (direct) unless NBSERVE_GRPC_DIRECT=0.
SERVER_VARIANTS = ["native", "native-loop", "aio"]
NUMERIC = [name for name in DTYPES if name != "BYTES"]


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
    reg.register(lambda x: x.sum().reshape(1), name="unbatched", inputs=[spec("x", [2, 2], "INT32")],
                 outputs=[spec("y", [1], "INT32")], max_batch_size=0)
    return reg


def start_server(registry: Registry, engine: str, **options: Any):
    """nbserve.Server with the gRPC engine chosen through the environment (read at start-up)."""
    settings = {"NBSERVE_GRPC_ENGINE": engine.split("-")[0],
                "NBSERVE_GRPC_DIRECT": "0" if engine.endswith("-loop") else "1"}
    previous = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        return nbserve.Server(registry, http=False, metrics=False, **options).start()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate()


@pytest.fixture(scope="module", params=SERVER_VARIANTS)
def server(request, gate):
    reg = build_registry(gate)
    server = start_server(reg, request.param)
    yield server
    gate.open.set()
    server.stop()
    reg.clear()


class AioClient:
    """tritonclient.grpc.aio behind synchronous calls, on its own event loop."""

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
    c = grpcclient.InferenceServerClient(server.grpc_address) if request.param == "sync" else AioClient(server.grpc_address)
    yield c
    c.close()


@pytest.fixture
def sync_client(server):
    c = grpcclient.InferenceServerClient(server.grpc_address)
    yield c
    c.close()


@pytest.fixture
def stub(server):
    """The generated stub on a plain channel, for messages tritonclient does not build."""
    channel = grpc.insecure_channel(server.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def infer_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def assert_serving(client) -> None:
    """The server still answers inference after an error."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("double", [infer_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


def assert_error(exc: InferenceServerException, code: str, *fragments: str) -> None:
    assert exc.status() == f"StatusCode.{code}", (exc.status(), exc.message())
    for fragment in fragments:
        assert fragment in exc.message(), (fragment, exc.message())


def assert_rpc_error(exc: grpc.RpcError, code: grpc.StatusCode, *fragments: str) -> None:
    assert exc.code() == code, (exc.code(), exc.details())
    for fragment in fragments:
        assert fragment in exc.details(), (fragment, exc.details())


# ----------------------------------------------------------------------------- health and metadata
def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "nbserve" and meta.version == nbserve.__version__
    assert set(meta.extensions) >= {"statistics", "model_configuration", "model_repository", "classification"}


def test_model_metadata_and_readiness(client):
    meta = client.get_model_metadata("double")
    assert meta.name == "double" and list(meta.versions) == ["1"] and meta.platform == "python"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 4])]
    assert client.get_model_metadata("double", "1").name == "double"
    assert client.is_model_ready("double") and client.is_model_ready("double", "1")
    assert not client.is_model_ready("double", "7")
    assert not client.is_model_ready("no_such_model")
    unbatched = client.get_model_metadata("unbatched")
    assert [list(t.shape) for t in unbatched.inputs] == [[2, 2]]


def test_model_config_is_the_triton_proto(client, server):
    response = client.get_model_config("gated")
    assert isinstance(response.config, model_config_pb2.ModelConfig)
    config = response.config
    assert config.name == "gated" and config.max_batch_size == 1
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32 and list(config.input[0].dims) == [1]
    assert config.dynamic_batching.priority_levels == 2
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 1
    assert config == server.core.model_config("gated")


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("dtype", NUMERIC)
def test_every_numeric_type(client, dtype):
    rng = np.random.default_rng(0)
    if dtype == "BOOL":
        x = rng.integers(0, 2, (2, 5)).astype(bool)
    elif dtype == "BF16":
        x = rng.standard_normal((2, 5)).astype(ml_dtypes.bfloat16)
    else:
        x = (rng.standard_normal((2, 5)) * 50).astype(DTYPES[dtype].numpy)
    result = client.infer(f"echo_{dtype.lower()}", [infer_input("x", x, dtype)])
    y = result.as_numpy("y")
    assert result.get_output("y").datatype == dtype
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.tobytes() == x.tobytes()


def test_bytes_tensors(client):
    x = np.array([[b"hello", b""], [b"\x00\xff binary", "snowman \u2603".encode()]], dtype=object)
    result = client.infer("echo_bytes", [infer_input("x", x, "BYTES")])
    assert result.get_output("y").datatype == "BYTES"
    assert result.as_numpy("y").tolist() == x.tolist()


def test_responses_use_raw_output_contents(sync_client):
    x = np.ones((2, 3), np.float32)
    response = sync_client.infer("multi", [infer_input("x", x, "FP32")]).get_response()
    assert [o.name for o in response.outputs] == ["scores", "label", "count"]
    assert len(response.raw_output_contents) == 3
    assert not any(o.HasField("contents") for o in response.outputs)
    assert response.raw_output_contents[0] == x.tobytes()


def test_requested_output_subset_and_id(client):
    x = np.ones((1, 3), np.float32)
    result = client.infer("multi", [infer_input("x", x, "FP32")], request_id="req-42",
                          outputs=[grpcclient.InferRequestedOutput("count"), grpcclient.InferRequestedOutput("label")])
    response = result.get_response()
    assert response.id == "req-42" and response.model_name == "multi" and response.model_version == "1"
    assert [o.name for o in response.outputs] == ["count", "label"]
    assert result.as_numpy("count").tolist() == [[3]]
    assert result.as_numpy("label").tolist() == [[b"cat"]]


def test_classification_extension(client):
    x = np.array([[0.1, 0.7, 0.2], [3, 1, 2]], np.float32)
    result = client.infer("multi", [infer_input("x", x, "FP32")],
                          outputs=[grpcclient.InferRequestedOutput("scores", class_count=2)])
    assert result.as_numpy("scores").tolist() == [[b"0.700000:1", b"0.200000:2"], [b"3.000000:0", b"2.000000:2"]]


def test_unbatched_model_and_explicit_version(client):
    x = np.array([[1, 2], [3, 4]], np.int32)
    result = client.infer("unbatched", [infer_input("x", x, "INT32")], model_version="1")
    assert result.as_numpy("y").tolist() == [10]
    assert result.get_response().model_version == "1"


def test_priority_timeout_and_parameters_pass_through(client, gate):
    gate.open.set()
    x = np.ones((1, 1), np.float32)
    result = client.infer("gated", [infer_input("x", x, "FP32")], priority=1, timeout=10_000_000,
                          parameters={"note": "hi", "n": 2})
    assert result.as_numpy("y").tolist() == [[1.0]]
    with pytest.raises(InferenceServerException) as info:
        client.infer("gated", [infer_input("x", x, "FP32")], priority=5)
    assert_error(info.value, "INVALID_ARGUMENT", "priority out of range", "1..2")
    assert_serving(client)


@pytest.mark.parametrize("dtype", [d for d in NUMERIC if d not in ("FP16", "BF16")] + ["BYTES"])
def test_typed_contents_as_other_clients_send_them(stub, dtype):
    from nbserve.serving._grpc_codec import CONTENTS_FIELD

    if dtype == "BYTES":
        x = np.array([[b"a", b"bc"], [b"", b"\xff"]], dtype=object)
    elif dtype == "BOOL":
        x = np.array([[True, False], [False, True]])
    else:
        x = np.array([[1, 2], [3, 4]], dtype=DTYPES[dtype].numpy)
    request = service_pb2.ModelInferRequest(model_name=f"echo_{dtype.lower()}", id="typed")
    tensor = request.inputs.add(name="x", datatype=dtype, shape=x.shape)
    getattr(tensor.contents, CONTENTS_FIELD[dtype]).extend(x.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    assert response.id == "typed"
    y = grpcclient.InferResult(response).as_numpy("y")
    assert y.tolist() == x.tolist() and y.dtype == x.dtype


def test_many_concurrent_requests_batch_and_all_answer(server):
    client = AioClient(server.grpc_address)
    try:
        xs = [np.full((1, 4), i, np.float32) for i in range(64)]
        results = client.gather([("infer", ("double", [infer_input("x", x, "FP32")]), {}) for x in xs])
    finally:
        client.close()
    for x, result in zip(xs, results):
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


def test_concurrent_sync_clients_on_threads(server):
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            with grpcclient.InferenceServerClient(server.grpc_address) as c:
                for i in range(50):
                    x = np.full((1 + i % 3, 4), seed * 100 + i, np.float32)
                    np.testing.assert_array_equal(c.infer("double", [infer_input("x", x, "FP32")]).as_numpy("y"), x * 2)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:1]


def test_stream_infer(server):
    """ModelStreamInfer: one response per request, errors in error_message, the stream goes on."""
    results: list[Any] = []
    done = threading.Event()
    expected = 4

    def callback(result, error):
        results.append((result, error))
        if len(results) == expected:
            done.set()

    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        client.start_stream(callback=callback)
        for i in range(3):
            client.async_stream_infer("double", [infer_input("x", np.full((1, 4), i, np.float32), "FP32")],
                                      request_id=f"s{i}")
        client.async_stream_infer("nope", [infer_input("x", np.ones((1, 4), np.float32), "FP32")], request_id="bad")
        assert done.wait(30), results
        client.stop_stream()
    finally:
        client.close()
    good = {r.get_response().id: r.as_numpy("y") for r, e in results if e is None}
    assert sorted(good) == ["s0", "s1", "s2"]
    for i in range(3):
        np.testing.assert_array_equal(good[f"s{i}"], np.full((1, 4), 2 * i, np.float32))
    (error,) = [e for _, e in results if e is not None]
    assert "unknown model" in error.message() and "model 'nope'" in error.message()


def test_stream_infer_with_the_aio_client(server):
    async def scenario():
        client = aioclient.InferenceServerClient(server.grpc_address)

        async def requests():
            for i in range(3):
                yield {"model_name": "double", "request_id": f"a{i}",
                       "inputs": [infer_input("x", np.full((1, 4), i, np.float32), "FP32")]}

        got = {}
        try:
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                got[result.get_response().id] = result.as_numpy("y")
                if len(got) == 3:
                    break
        finally:
            await client.close()
        return got

    got = asyncio.run(scenario())
    assert sorted(got) == ["a0", "a1", "a2"]
    np.testing.assert_array_equal(got["a2"], np.full((1, 4), 4, np.float32))


# ----------------------------------------------------------------------------- statistics and repository
def test_statistics(client):
    client.infer("double", [infer_input("x", np.ones((3, 4), np.float32), "FP32")])
    stats = client.get_inference_statistics("double")
    assert isinstance(stats, service_pb2.ModelStatisticsResponse)
    (entry,) = stats.model_stats
    assert entry.name == "double" and entry.version == "1" and entry.inference_count >= 3
    assert entry.inference_stats.success.count >= 1 and entry.inference_stats.success.ns > 0
    assert entry.inference_stats.compute_infer.count >= 1
    assert any(b.batch_size >= 1 for b in entry.batch_stats)
    assert client.get_inference_statistics("double", "1").model_stats[0].version == "1"
    names = {e.name for e in client.get_inference_statistics().model_stats}
    assert {"double", "multi", "echo_fp32"} <= names
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("no_such_model")
    assert_error(info.value, "NOT_FOUND", "unknown model")


def test_repository_index_load_and_unload(client):
    index = client.get_model_repository_index()
    entries = {(m.name, m.version, m.state, m.reason) for m in index.models}
    assert ("swap", "1", "READY", "") in entries
    x = np.ones((1, 1), np.float32)
    client.unload_model("swap")
    try:
        assert not client.is_model_ready("swap")
        entries = {(m.name, m.version, m.state, m.reason) for m in client.get_model_repository_index().models}
        assert ("swap", "", "UNAVAILABLE", "unloaded") in entries
        with pytest.raises(InferenceServerException) as info:
            client.infer("swap", [infer_input("x", x, "FP32")])
        assert_error(info.value, "UNAVAILABLE", "model 'swap'", "unloaded")
        assert_serving(client)
    finally:
        client.load_model("swap")
    assert client.is_model_ready("swap")
    assert client.infer("swap", [infer_input("x", x, "FP32")]).as_numpy("y").tolist() == [[2.0]]


def test_repository_index_ready_filter(stub):
    index = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    assert index.models and all(m.state == "READY" for m in index.models)


def test_load_with_config_override(client):
    from google.protobuf import json_format

    config = json_format.MessageToDict(client.get_model_config("swap").config, preserving_proto_field_name=True)
    config["dynamic_batching"]["max_queue_delay_microseconds"] = 250
    client.load_model("swap", config=json.dumps(config))
    assert client.get_model_config("swap").config.dynamic_batching.max_queue_delay_microseconds == 250
    x = np.ones((1, 1), np.float32)
    assert client.infer("swap", [infer_input("x", x, "FP32")]).as_numpy("y").tolist() == [[2.0]]


def test_load_errors_name_the_fix(client):
    with pytest.raises(InferenceServerException) as info:
        client.load_model("no_such_model")
    assert_error(info.value, "NOT_FOUND", "unknown model")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("swap", config="{not json")
    assert_error(info.value, "INVALID_ARGUMENT", "not valid JSON")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("swap", config="{}", files={"file:1/model.py": b"print()"})
    assert_error(info.value, "INVALID_ARGUMENT", "file:1/model.py", "nbserve.register")
    with pytest.raises(InferenceServerException) as info:
        client.unload_model("no_such_model")
    assert_error(info.value, "NOT_FOUND", "unknown model")
    assert_serving(client)


# ----------------------------------------------------------------------------- errors
def test_unknown_model_and_version(client):
    x = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("doubel", [infer_input("x", x, "FP32")])
    assert_error(info.value, "NOT_FOUND", "model 'doubel'", "unknown model", "did you mean 'double'")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", x, "FP32")], model_version="9")
    assert_error(info.value, "NOT_FOUND", "model 'double'", "expected one of [1]", "leave the version out")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert_error(info.value, "NOT_FOUND", "unknown model")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("no_such_model")
    assert_error(info.value, "NOT_FOUND", "unknown model")
    assert_serving(client)


def test_wrong_dtype_shape_names_and_batch(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", np.ones((1, 4), np.float64), "FP64")])
    assert_error(info.value, "INVALID_ARGUMENT", "tensor 'x'", "model 'double'", "expected FP32", "got FP64",
                 'x.astype("float32")')
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", np.ones((1, 5), np.float32), "FP32")])
    assert_error(info.value, "INVALID_ARGUMENT", "tensor 'x'", "wrong shape", "got [1, 5]", "reshape")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("z", np.ones((1, 4), np.float32), "FP32")])
    assert_error(info.value, "INVALID_ARGUMENT", "unexpected input 'z'", "model 'double'")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [])
    assert_error(info.value, "INVALID_ARGUMENT", "missing input 'x'", "model 'double'")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", np.ones((1, 4), np.float32), "FP32")],
                     outputs=[grpcclient.InferRequestedOutput("nope")])
    assert_error(info.value, "INVALID_ARGUMENT", "unknown output 'nope'", "expected ['y']")
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [infer_input("x", np.ones((9, 4), np.float32), "FP32")])
    assert_error(info.value, "INVALID_ARGUMENT", "max_batch_size", "at most 8 rows", "got 9")
    assert_serving(client)


def test_malformed_messages_are_invalid_argument(server, stub, sync_client):
    def request(**changes):
        message = service_pb2.ModelInferRequest(model_name="double")
        message.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        message.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        for key, value in changes.items():
            if key == "raw":
                message.raw_input_contents[0] = value
            elif key == "datatype":
                message.inputs[0].datatype = value
            elif key == "extra_raw":
                message.raw_input_contents.append(value)
        return message

    cases = [
        (request(raw=b"\0" * 12), "expected 16 bytes for shape [1, 4] of FP32", "got 12 bytes"),
        (request(datatype="FLOAT"), "unknown datatype 'FLOAT'"),
        (request(extra_raw=b"\0" * 4), "one entry per input"),
    ]
    for message, *fragments in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(message)
        assert_rpc_error(info.value, grpc.StatusCode.INVALID_ARGUMENT, "model 'double'", *fragments)
        assert_serving(sync_client)
    # Bytes that are not a ModelInferRequest at all: the method's deserializer rejects them.
    with grpc.insecure_channel(server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff\xff")
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN,
                                 grpc.StatusCode.INTERNAL), info.value
    assert_serving(sync_client)


def test_model_that_raises_is_internal(client):
    with pytest.raises(InferenceServerException) as info:
        client.infer("broken", [infer_input("x", np.ones((1, 1), np.float32), "FP32")])
    assert_error(info.value, "INTERNAL", "model 'broken'", "ValueError", "broken on purpose", "fix the model code")
    assert_serving(client)


def test_busy_queue_is_unavailable(server, gate):
    gate.open.clear()
    gate.entered.clear()
    x = np.ones((1, 1), np.float32)

    def first_request():
        with grpcclient.InferenceServerClient(server.grpc_address) as c:
            c.infer("gated", [infer_input("x", x, "FP32")])

    async def scenario(client):
        # One request runs in the model; then one request with a 1 us timeout (which
        # allow_timeout_override lets expire) and two more compete for the one queue slot. Two of
        # the three fail while the model is still blocked (whichever holds the slot); the gate
        # opens only then, so a late arrival cannot slip into a drained queue.
        tasks = [asyncio.ensure_future(client.infer("gated", [infer_input("x", x, "FP32")], **kw))
                 for kw in ({"timeout": 1}, {}, {})]
        deadline = asyncio.get_running_loop().time() + 30
        while sum(t.done() for t in tasks) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait([t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED,
                               timeout=deadline - asyncio.get_running_loop().time())
        gate.open.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first = threading.Thread(target=first_request)
    first.start()
    client = AioClient(server.grpc_address)
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
        assert_error(error, "UNAVAILABLE", "model 'gated'", "queue")


def test_unoffered_rpcs_are_unimplemented_with_a_reason(client):
    calls = [
        (lambda: client.get_system_shared_memory_status(), "system shared memory"),
        (lambda: client.register_system_shared_memory("r", "/k", 16), "system shared memory"),
        (lambda: client.unregister_system_shared_memory(), "system shared memory"),
        (lambda: client.get_cuda_shared_memory_status(), "CUDA shared memory"),
        (lambda: client.unregister_cuda_shared_memory(), "CUDA shared memory"),
        (lambda: client.get_trace_settings(), "trace settings"),
        (lambda: client.get_log_settings(), "log settings"),
    ]
    for call, what in calls:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert_error(info.value, "UNIMPLEMENTED", what, "not supported")
    assert_serving(client)


def test_unknown_method_is_unimplemented(server, sync_client):
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as info:
            call(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert_serving(sync_client)


# ----------------------------------------------------------------------------- limits and auth
@pytest.fixture(scope="module", params=ENGINES)
def guarded_server(request):
    reg = Registry()
    reg.register(lambda x: x * 2, name="double", inputs=[TensorSpec("x", [-1], "FP32")],
                 outputs=[TensorSpec("y", [-1], "FP32")], max_batch_size=8)
    server = start_server(reg, request.param, token="s3cret", max_body_bytes=4096)
    yield server
    server.stop()
    reg.clear()


AUTH = {"authorization": "Bearer s3cret"}


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_bearer_token(guarded_server, kind):
    client = (grpcclient.InferenceServerClient(guarded_server.grpc_address) if kind == "sync"
              else AioClient(guarded_server.grpc_address))
    try:
        assert client.is_server_live() and client.is_server_ready()  # health needs no token
        with pytest.raises(InferenceServerException) as info:
            client.get_server_metadata()
        assert_error(info.value, "UNAUTHENTICATED", "bearer token", "authorization")
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("double", headers={"authorization": "Bearer wrong"})
        assert_error(info.value, "UNAUTHENTICATED", "bearer token")
        x = np.ones((1, 4), np.float32)
        with pytest.raises(InferenceServerException) as info:
            client.infer("double", [infer_input("x", x, "FP32")])
        assert_error(info.value, "UNAUTHENTICATED")
        assert client.get_server_metadata(headers=dict(AUTH)).name == "nbserve"
        result = client.infer("double", [infer_input("x", x, "FP32")], headers=dict(AUTH))
        assert result.as_numpy("y").tolist() == [[2.0] * 4]
    finally:
        client.close()


def test_message_over_limit_is_resource_exhausted(guarded_server):
    client = grpcclient.InferenceServerClient(guarded_server.grpc_address)
    try:
        big = np.ones((1, 2048), np.float32)  # 8 KiB > 4 KiB
        with pytest.raises(InferenceServerException) as info:
            client.infer("double", [infer_input("x", big, "FP32")], headers=dict(AUTH))
        assert_error(info.value, "RESOURCE_EXHAUSTED")
        small = np.ones((1, 4), np.float32)
        assert client.infer("double", [infer_input("x", small, "FP32")], headers=dict(AUTH)).as_numpy("y").shape == (1, 4)
    finally:
        client.close()


# ----------------------------------------------------------------------------- engines and lifecycle
def test_engine_choice():
    from nbserve.errors import ConfigError
    from nbserve.serving import _grpc_engine
    from nbserve.serving.core import InferenceCore
    from nbserve.serving.grpc import start_grpc

    reg = Registry()
    reg.register(_identity, name="echo", inputs=[TensorSpec("x", [-1], "FP32")],
                 outputs=[TensorSpec("y", [-1], "FP32")], max_batch_size=8)
    core = InferenceCore(reg)
    core.start()

    async def scenario():
        chosen = []
        for engine in ("auto", "native", "aio"):
            endpoint = await start_grpc(core, "127.0.0.1", 0, engine=engine)
            chosen.append(endpoint.engine)
            # The endpoint serves on this loop: the client must not block it.
            client = aioclient.InferenceServerClient(f"127.0.0.1:{endpoint.port}")
            assert await client.is_model_ready("echo")
            result = await client.infer("echo", [infer_input("x", np.ones((1, 2), np.float32), "FP32")])
            assert result.as_numpy("y").tolist() == [[1.0, 1.0]]
            await client.close()
            await endpoint.close()
            await endpoint.close()  # idempotent
        with pytest.raises(ConfigError, match="unknown gRPC engine 'bogus'"):
            await start_grpc(core, "127.0.0.1", 0, engine="bogus")
        return chosen

    try:
        assert asyncio.run(scenario()) == ["native" if _grpc_engine.available() else "aio", "native", "aio"]
    finally:
        core.close()
        reg.clear()


def test_port_in_use_names_the_fix():
    from nbserve.errors import ServerStateError

    reg = Registry()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for engine in ENGINES:
            with pytest.raises(ServerStateError, match="choose another port"):
                start_server(reg, engine, grpc_port=port)

@pytest.mark.parametrize("engine", ENGINES)
def test_endpoint_closes_its_port_and_thread(engine):
    reg = Registry()
    reg.register(_identity, name="echo", inputs=[TensorSpec("x", [-1], "FP32")],
                 outputs=[TensorSpec("y", [-1], "FP32")], max_batch_size=8)
    for _ in range(2):  # a second server in the same process, as re-running a notebook cell does
        server = start_server(reg, engine)
        port = server.grpc_port
        with grpcclient.InferenceServerClient(server.grpc_address) as c:
            assert c.is_server_live()
            x = np.ones((1, 3), np.float32)
            assert c.infer("echo", [infer_input("x", x, "FP32")]).as_numpy("y").tolist() == x.tolist()
        server.stop()
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        assert not [t for t in threading.enumerate() if t.name in ("nbserve-grpc-poll", "nbserve-grpc-answer")]
    reg.clear()


def test_stop_finishes_in_flight_requests(gate):
    for engine in ENGINES:
        reg = Registry()
        gate.open.clear()
        gate.entered.clear()
        reg.register(gate, name="gated", inputs=[TensorSpec("x", [1], "FP32")],
                     outputs=[TensorSpec("y", [1], "FP32")], max_batch_size=1)
        server = start_server(reg, engine)
        outcome: list[Any] = []

        def request():
            with grpcclient.InferenceServerClient(server.grpc_address) as c:
                try:
                    outcome.append(c.infer("gated", [infer_input("x", np.ones((1, 1), np.float32), "FP32")]))
                except InferenceServerException as exc:
                    outcome.append(exc)

        thread = threading.Thread(target=request)
        thread.start()
        assert gate.entered.wait(30)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        gate.open.set()
        stopper.join(30)
        thread.join(30)
        assert len(outcome) == 1 and not isinstance(outcome[0], Exception), (engine, [str(o) for o in outcome])
        assert outcome[0].as_numpy("y").tolist() == [[1.0]]
        reg.clear()


@pytest.mark.parametrize("fails", [False, True], ids=["answers", "model-error"])
def test_a_batch_of_direct_answers_reaches_each_call(fails):
    """A batch's answers leave the instance thread in one hand-off (the native engine's answer
    thread sends them): each call gets its own outputs and id, or the batch's error, and nothing is
    left queued."""
    gate = Gate()

    def model(x):
        gate(x[:1])
        if fails and x.shape[0] > 1:
            raise ValueError("the batch fails on purpose")
        return x * 3

    reg = Registry()
    reg.register(model, name="gated_batch", inputs=[TensorSpec("x", [2], "FP32")],
                 outputs=[TensorSpec("y", [2], "FP32")], max_batch_size=8,
                 dynamic_batching={"max_queue_delay_microseconds": 1000})
    server = start_server(reg, "native")
    try:
        async def scenario():
            async with aioclient.InferenceServerClient(server.grpc_address) as client:
                def call(i):
                    x = np.full((1, 2), i, np.float32)
                    return client.infer("gated_batch", [infer_input("x", x, "FP32")], request_id=f"r{i}")

                first = asyncio.ensure_future(call(0))  # holds the instance thread at the gate
                while not gate.entered.is_set():
                    await asyncio.sleep(0.01)
                rest = [asyncio.ensure_future(call(i)) for i in range(1, 7)]
                await asyncio.sleep(0.3)  # all six queued behind the gate: they form one batch
                gate.open.set()
                return await asyncio.gather(first, *rest, return_exceptions=True)

        results = asyncio.run(scenario())
        assert results[0].get_response().id == "r0"
        for i, result in enumerate(results[1:], start=1):
            if fails:
                assert isinstance(result, InferenceServerException), result
                assert "the batch fails on purpose" in str(result)
                assert "StatusCode.INTERNAL" in str(result.status())
            else:
                assert result.get_response().id == f"r{i}"
                np.testing.assert_array_equal(result.as_numpy("y"), np.full((1, 2), 3 * i, np.float32))
        stats = server.core.model_statistics("gated_batch")["model_stats"][-1]
        if fails:
            assert stats["inference_stats"]["fail"]["count"] == 6
        else:
            assert stats["execution_count"] == 2  # the first request alone, then the other six together
        assert [t for t in threading.enumerate() if t.name == "nbserve-grpc-answer"], "no answer thread"
    finally:
        server.stop()
        reg.clear()
