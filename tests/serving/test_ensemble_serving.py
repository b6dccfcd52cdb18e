"""Ensembles in the server: DAG execution through each step's batcher, through the in-process API,
HTTP (tritonclient.http) and gRPC (tritonclient.grpc), with traces and statistics."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import nbserve
from nbserve.errors import InferenceError, InvalidInput, ModelNotReady
from nbserve.serving.core import Traced
from nbserve.serving.server import Server
from nbserve.tensors import triton_dtype

ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS = ["inprocess", "http", "grpc"]
X = np.ones((1, 2), "float32")


def load_readability():
    """examples/readability.py, the pipeline of DESIGN.md, as a module."""
    name = "nbserve_example_readability"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "readability.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def texts(n: int, seed: int = 11) -> np.ndarray:
    return np.array([[t.encode()] for t in load_readability().generated_texts(n, seed)], dtype=object)


@pytest.fixture(scope="module")
def registry():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    reg = load_readability().register_models(nbserve.Registry())
    reg.register(load_readability().build_ensemble())
    yield reg
    reg.clear()


@pytest.fixture(scope="module")
def server(registry):
    server = Server(registry, metrics=False).start()
    yield server
    server.stop()


class Caller:
    """One way of calling the server: the in-process API, tritonclient.http or tritonclient.grpc."""

    def __init__(self, server: Server, protocol: str) -> None:
        self.server = server
        self.protocol = protocol
        self.module = {"http": httpclient, "grpc": grpcclient}.get(protocol)
        self.client = self.new_client()

    def new_client(self):
        if self.module is None:
            return None
        address = self.server.http_address if self.protocol == "http" else self.server.grpc_address
        return self.module.InferenceServerClient(url=address)

    def infer(self, model: str, inputs: dict, outputs: list[str], client=None) -> dict[str, np.ndarray]:
        if self.module is None:
            result = self.server.infer(model, inputs)
            return {name: result[name] for name in outputs}
        tensors = []
        for name, array in inputs.items():
            tensor = self.module.InferInput(name, list(array.shape), triton_dtype(array))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = (client or self.client).infer(model, tensors)
        return {name: result.as_numpy(name) for name in outputs}

    def statistics(self, model: str) -> dict:
        return self.server.core.model_statistics(model)["model_stats"][0]


@pytest.fixture(params=PROTOCOLS)
def caller(request, server):
    return Caller(server, request.param)


def register_once(registry: nbserve.Registry, obj, name: str, **options):
    """Register ``obj`` unless a test with another protocol already did (the server is shared)."""
    if name not in registry:
        registry.register(obj, name=name, **options)


def wait_until_served(server: Server, name: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not server.core.model_ready(name):
        assert time.monotonic() < end, f"{name} was not served within {deadline_s} s"
        threading.Event().wait(0.01)


def run_concurrently(call, n_workers: int, per_worker: int) -> list:
    """``call(worker, i)`` from ``n_workers`` threads, ``per_worker`` times each; returns every result."""
    with concurrent.futures.ThreadPoolExecutor(n_workers) as pool:
        futures = [pool.submit(lambda w=w: [call(w, i) for i in range(per_worker)]) for w in range(n_workers)]
        return [r for f in futures for r in f.result(timeout=120)]


# ----------------------------------------------------------------------------- the readability pipeline
def test_readability_matches_the_steps_by_hand(caller, registry):
    text, weight = texts(9), np.linspace(0, 1, 9, dtype=np.float32)[:, None]
    got = caller.infer("readability", {"text": text, "weight": weight}, ["score"])["score"]
    np.testing.assert_allclose(got, load_readability().by_hand(registry, text, weight), rtol=1e-5, atol=1e-6)


def test_64_concurrent_readability_requests_all_succeed(caller, registry, server):
    readability = load_readability()
    text = texts(64, seed=3)
    weight = np.full((64, 1), 0.4, np.float32)
    expected = readability.by_hand(registry, text, weight)
    before = caller.statistics("readability")["inference_stats"]
    clients = [caller.new_client() for _ in range(64)]

    def call(worker: int, i: int):
        row = (worker + i) % 64
        got = caller.infer("readability", {"text": text[row:row + 1], "weight": weight[row:row + 1]}, ["score"],
                           client=clients[worker])["score"]
        return row, got

    results = run_concurrently(call, 64, 3)
    assert len(results) == 192
    for row, got in results:
        np.testing.assert_allclose(got, expected[row:row + 1], rtol=1e-5, atol=1e-6)
    after = caller.statistics("readability")["inference_stats"]
    assert after["success"]["count"] - before["success"]["count"] == 192
    assert after["fail"]["count"] == before["fail"]["count"]
    # The steps ran batches of several ensemble requests at once.
    bert = caller.statistics("bert")["batch_stats"]
    assert max(b["batch_size"] for b in bert) > 1


def test_trace_returns_every_intermediate_tensor(server, registry):
    readability = load_readability()
    text, weight = texts(3), np.full((3, 1), 0.6, np.float32)
    result = server.infer("readability", {"text": text, "weight": weight}, trace=True)
    assert isinstance(result, Traced) and list(result) == ["score"]
    assert [s["model"] for s in result.trace] == ["preprocess", "bert", "trees", "postprocess"]
    assert [s["step"] for s in result.trace] == [0, 1, 2, 3]
    assert all(s["version"] == 1 and s["queue_us"] > 0 and s["compute_us"] > 0 for s in result.trace)
    assert all(0 <= s["start_us"] < s["end_us"] for s in result.trace)
    pre, bert, trees, post = result.trace
    tokens = readability.preprocess(text)
    for key in ("input_ids", "attention_mask", "features"):
        np.testing.assert_array_equal(pre["outputs"][key], tokens[key])
    np.testing.assert_array_equal(bert["inputs"]["input_ids"], tokens["input_ids"])
    np.testing.assert_array_equal(trees["inputs"]["input__0"], tokens["features"])
    # Tensors pass between steps as they are: the very arrays, no copy.
    assert post["inputs"]["bert"] is bert["outputs"]["logits"] is result.tensors["bert_score"]
    assert post["inputs"]["trees"] is trees["outputs"]["output__0"]
    assert bert["inputs"]["attention_mask"] is pre["outputs"]["attention_mask"]
    assert post["start_us"] >= max(bert["end_us"], trees["end_us"]) - 1
    assert sorted(result.tensors) == ["bert_score", "feats", "ids", "mask", "score", "text", "tree_score", "weight"]
    np.testing.assert_allclose(result["score"], readability.by_hand(registry, text, weight), rtol=1e-5, atol=1e-6)
    # A plain model traces as one step; the async API traces too.
    single = server.infer("postprocess", {"bert": weight, "trees": weight, "weight": weight}, trace=True)
    assert [s["model"] for s in single.trace] == ["postprocess"] and single.trace[0]["compute_us"] > 0

    async def traced():
        return await server.ainfer("readability", {"text": text, "weight": weight}, trace=True)

    import asyncio

    assert len(asyncio.run(traced()).trace) == 4


# ----------------------------------------------------------------------------- DAG execution
def test_diamond(caller, registry, server):
    register_once(registry, lambda x: x * 2, "d_double", example=X)
    register_once(registry, lambda x: x + 1, "d_inc", example=X)
    register_once(registry, lambda a, b: a * b, "d_mul", example={"a": X, "b": X})
    if "diamond" not in registry:
        ens = nbserve.Ensemble("diamond", max_batch_size=8).input("x", "FP32", [2])
        ens.step("d_double", {"x": "x"}, {"output_0": "left"}).step("d_inc", {"x": "x"}, {"output_0": "right"})
        ens.step("d_mul", {"a": "left", "b": "right"}, {"output_0": "y"}).output("y").output("left")
        registry.register(ens)
    wait_until_served(server, "diamond")
    x = np.arange(6, dtype="float32").reshape(3, 2)
    got = caller.infer("diamond", {"x": x}, ["y", "left"])
    np.testing.assert_array_equal(got["y"], (x * 2) * (x + 1))
    np.testing.assert_array_equal(got["left"], x * 2)


def sleepy(name: str):
    def model(x):
        time.sleep(0.3)  # the model's own work: what the two branches do at the same time
        return x + 1

    model.__name__ = name
    return model


def test_parallel_branches_overlap(caller, registry, server):
    register_once(registry, sleepy("slow_a"), "slow_a", example=X)
    register_once(registry, sleepy("slow_b"), "slow_b", example=X)
    register_once(registry, lambda a, b: a + b, "join", example={"a": X, "b": X})
    if "branches" not in registry:
        ens = nbserve.Ensemble("branches", max_batch_size=8).input("x", "FP32", [2])
        ens.step("slow_a", {"x": "x"}, {"output_0": "a"}).step("slow_b", {"x": "x"}, {"output_0": "b"})
        registry.register(ens.step("join", {"a": "a", "b": "b"}, {"output_0": "y"}).output("y"))
    wait_until_served(server, "branches")
    started = time.perf_counter()
    got = caller.infer("branches", {"x": X}, ["y"])["y"]
    elapsed = time.perf_counter() - started
    assert got.tolist() == [[4.0, 4.0]]
    # One branch after the other takes at least 0.6 s; together about 0.3 s plus the calls' overhead.
    assert 0.3 <= elapsed < 0.6, f"two 0.3 s branches took {elapsed:.3f} s: they did not overlap"
    trace = server.infer("branches", {"x": X}, trace=True).trace
    a, b = trace[0], trace[1]
    assert a["start_us"] < b["end_us"] and b["start_us"] < a["end_us"]


def test_a_failing_step_is_named(caller, registry, server):
    def fragile(x):
        if (x < 0).any():
            raise ValueError("negative scores are not allowed")
        return x

    register_once(registry, fragile, "fragile", example=X)
    register_once(registry, lambda x: x * 10, "f_scale", example=X)
    if "guarded" not in registry:
        ens = nbserve.Ensemble("guarded", max_batch_size=8).input("x", "FP32", [2])
        ens.step("f_scale", {"x": "x"}, {"output_0": "scaled"}).step("fragile", {"x": "scaled"}, {"output_0": "y"})
        registry.register(ens.output("y"))
    wait_until_served(server, "guarded")
    before = caller.statistics("guarded")["inference_stats"]["fail"]["count"]
    expected = r"model 'guarded' v1: step 'fragile' failed: model 'fragile' v1: the model raised ValueError: " \
               r"negative scores are not allowed"
    error_type = InferenceError if caller.module is None else InferenceServerException
    with pytest.raises(error_type, match=expected) as info:
        caller.infer("guarded", {"x": -X}, ["y"])
    if caller.protocol == "http":
        assert info.value.status() == "500"
    elif caller.protocol == "grpc":
        assert info.value.status() == "StatusCode.INTERNAL"
    assert caller.statistics("guarded")["inference_stats"]["fail"]["count"] == before + 1
    assert caller.infer("guarded", {"x": X}, ["y"])["y"].tolist() == [[10.0, 10.0]]


def shout(text):
    return np.array([[t.upper() + b"!" for t in row] for row in text], dtype=object)


def length(text):
    return np.array([[len(t) for t in row] for row in text], dtype=np.int32)


def test_bytes_tensors_through_steps(caller, registry, server):
    example = {"text": np.array([[b"a"]], dtype=object)}
    register_once(registry, shout, "b_shout", example=example)
    register_once(registry, length, "b_length", example=example)
    if "loud" not in registry:
        ens = nbserve.Ensemble("loud", max_batch_size=8).input("text", "BYTES", [1])
        ens.step("b_shout", {"text": "text"}, {"output_0": "loud"}).step("b_shout", {"text": "loud"}, {"output_0": "louder"})
        ens.step("b_length", {"text": "louder"}, {"output_0": "n"})
        registry.register(ens.output("louder").output("n"))
    wait_until_served(server, "loud")
    text = np.array([[b"hello"], ["grüße".encode()]], dtype=object)
    got = caller.infer("loud", {"text": text}, ["louder", "n"])
    assert got["louder"].tolist() == [[b"HELLO!!"], ["GRüßE!!".encode()]]
    assert got["n"].tolist() == [[7], [len("GRüßE!!".encode())]]


def test_steps_batch_across_concurrent_ensemble_requests(caller, registry, server):
    name = f"batched_{caller.protocol}"
    step = f"{name}_step"
    # A 20 ms window: 16 concurrent one-row requests arrive within it.
    registry.register(lambda x: x + 1, name=step, example=X, max_batch_size=16,
                      dynamic_batching={"max_queue_delay_microseconds": 20000})
    ens = nbserve.Ensemble(name, max_batch_size=16).input("x", "FP32", [2])
    registry.register(ens.step(step, {"x": "x"}, {"output_0": "y"}).output("y"))
    wait_until_served(server, name)
    clients = [caller.new_client() for _ in range(16)]
    results = run_concurrently(
        lambda w, i: caller.infer(name, {"x": X * w}, ["y"], client=clients[w])["y"].tolist() == [[w + 1.0] * 2], 16, 4)
    assert all(results)
    stats = caller.statistics(step)
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
    assert sum(size * count for size, count in sizes.items()) == 64 == stats["inference_count"]
    assert max(sizes) > 1, f"no batch of several ensemble requests: {sizes}"
    assert caller.statistics(name)["inference_stats"]["success"]["count"] == 64


# ----------------------------------------------------------------------------- serving life
def test_metadata_config_and_statistics_over_the_network(server):
    http = httpclient.InferenceServerClient(url=server.http_address)
    grpc = grpcclient.InferenceServerClient(url=server.grpc_address)
    meta = http.get_model_metadata("readability")
    assert meta["platform"] == "ensemble"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("text", "BYTES", [-1, 1]), ("weight", "FP32", [-1, 1])]
    config = grpc.get_model_config("readability").config
    assert config.platform == "ensemble" and len(config.ensemble_scheduling.step) == 4
    assert http.is_model_ready("readability") and grpc.is_model_ready("readability")
    server.infer("readability", {"text": texts(2), "weight": np.ones((2, 1), np.float32)})
    stats = http.get_inference_statistics("readability")["model_stats"][0]
    assert stats["name"] == "readability" and stats["inference_stats"]["success"]["count"] >= 1
    assert grpc.get_inference_statistics("readability").model_stats[0].inference_stats.success.count >= 1


def test_ensemble_statistics_count_as_triton_does(server):
    """Triton reports an ensemble's requests and rows, no queue of its own, and its steps' compute summed."""
    before = server.core.model_statistics("readability")["model_stats"][0]
    step_before = server.core.model_statistics("bert")["model_stats"][0]["inference_stats"]["compute_infer"]["ns"]
    for rows in (1, 3):
        server.infer("readability", {"text": texts(rows), "weight": np.ones((rows, 1), np.float32)})
    after = server.core.model_statistics("readability")["model_stats"][0]
    step_after = server.core.model_statistics("bert")["model_stats"][0]["inference_stats"]["compute_infer"]["ns"]
    stats, old = after["inference_stats"], before["inference_stats"]
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] == 2
    assert stats["success"]["count"] - old["success"]["count"] == 2
    assert stats["queue"]["ns"] == old["queue"]["ns"]
    assert stats["compute_infer"]["ns"] - old["compute_infer"]["ns"] > step_after - step_before > 0


def test_steps_follow_re_registration_and_removal(registry, server):
    register_once(registry, lambda x: x + 1, "swap_step", example=X)
    if "swapping" not in registry:
        ens = nbserve.Ensemble("swapping", max_batch_size=8).input("x", "FP32", [2])
        registry.register(ens.step("swap_step", {"x": "x"}, {"output_0": "y"}).output("y"))
    wait_until_served(server, "swapping")
    assert server.infer("swapping", {"x": X})["y"].tolist() == [[2.0, 2.0]]
    registry.register(lambda x: x + 100, name="swap_step", example=X)
    deadline = time.monotonic() + 10
    while server.infer("swapping", {"x": X})["y"][0, 0] != 101.0:
        assert time.monotonic() < deadline, "the ensemble kept the old step version"
        threading.Event().wait(0.01)
    assert server.infer("swapping", {"x": X}, trace=True).trace[0]["version"] == 2
    client = httpclient.InferenceServerClient(url=server.http_address)
    assert client.is_model_ready("swapping")
    registry.remove("swap_step")
    with pytest.raises(ModelNotReady, match=r"model 'swapping' v1: step 'swap_step' failed: .*swap_step"):
        server.infer("swapping", {"x": X})
    # As in Triton: an ensemble whose step model is gone is not ready.
    assert not server.core.model_ready("swapping")
    assert not client.is_model_ready("swapping")
    client.close()


def test_an_optional_input_left_out_fails_the_step_that_reads_it(caller, registry, server):
    register_once(registry, lambda a, b: a - b, "o_sub", example={"a": X, "b": X})
    if "optional" not in registry:
        ens = nbserve.Ensemble("optional", max_batch_size=8).input("x", "FP32", [2])
        ens.input("offset", "FP32", [2], optional=True)
        registry.register(ens.step("o_sub", {"a": "x", "b": "offset"}, {"output_0": "y"}).output("y"))
    wait_until_served(server, "optional")
    assert caller.infer("optional", {"x": X, "offset": X}, ["y"])["y"].tolist() == [[0.0, 0.0]]
    error_type = InvalidInput if caller.module is None else InferenceServerException
    with pytest.raises(error_type, match="step 'o_sub' failed: .*left out this optional input") as info:
        caller.infer("optional", {"x": X}, ["y"])
    if caller.protocol == "http":
        assert info.value.status() == "400"


def test_priority_and_requested_outputs(server):
    text, weight = texts(2), np.ones((2, 1), np.float32)
    got = server.core.infer_sync("readability", {"text": text, "weight": weight}, priority=1, outputs=["score"])
    assert list(got.outputs) == ["score"] and got.model_version == 1


@pytest.mark.slow
def test_subprocess_server_runs_the_written_ensemble(tmp_path):
    readability = load_readability()
    registry = readability.register_models(nbserve.Registry(), python_only=True)
    registry.register(readability.build_ensemble())
    text, weight = texts(4), np.full((4, 1), 0.5, np.float32)
    expected = readability.by_hand(registry, text, weight)
    from nbserve.serving.child import SubprocessServer

    server = SubprocessServer(registry).start()
    try:
        got = Caller(server, "http").infer("readability", {"text": text, "weight": weight}, ["score"])["score"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    finally:
        server.stop()


@pytest.mark.gpu
def test_tensors_stay_on_the_gpu_between_steps():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    registry = nbserve.Registry()
    x = torch.ones((1, 4), device="cuda")
    registry.register(torch.nn.Linear(4, 4).cuda().eval(), name="g_first", example=x)
    registry.register(torch.nn.Linear(4, 2).cuda().eval(), name="g_second", example=x)
    ens = nbserve.Ensemble("on_gpu", max_batch_size=8).input("x", "FP32", [4])
    ens.step("g_first", {"input__0": "x"}, {"output__0": "h"}).step("g_second", {"input__0": "h"}, {"output__0": "y"})
    registry.register(ens.output("y"))
    with Server(registry, http=False, grpc=False, metrics=False).start() as server:
        result = server.infer("on_gpu", {"x": torch.ones((3, 4), device="cuda")}, trace=True)
    assert result.tensors["h"].is_cuda and result["y"].is_cuda
    assert result.trace[1]["inputs"]["input__0"] is result.trace[0]["outputs"]["output__0"]
