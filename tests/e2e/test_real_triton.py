"""The real tritonserver (from nvidia-pytriton) runs here, serves what it is given and leaves nothing behind.

These tests pin down the harness the other real-Triton tests and the benchmarks stand on: a
hand-written Python-backend model with dynamic batching, inferred over HTTP and gRPC with tritonclient,
and nbserve's own export of a registered callable loading unchanged in tritonserver.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from nbserve import _tritonserver
from nbserve.errors import ServerStateError

pytestmark = [pytest.mark.triton, pytest.mark.slow]

_reason = _tritonserver.unavailable_reason()
if _reason is not None:
    pytestmark.append(pytest.mark.skip(reason=f"real tritonserver unavailable: {_reason}"))

DOUBLE_CONFIG = """\
name: "double"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 50000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

DOUBLE_MODEL_PY = '''\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = pb_utils.Tensor("y", (x * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return responses
'''


def write_double(repository: Path, config: str = DOUBLE_CONFIG) -> Path:
    (repository / "double" / "1").mkdir(parents=True)
    (repository / "double" / "config.pbtxt").write_text(config)
    (repository / "double" / "1" / "model.py").write_text(DOUBLE_MODEL_PY)
    return repository


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = write_double(tmp_path_factory.mktemp("repository"))
    with _tritonserver.TritonServer(repository) as running:
        yield running


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; it only waits to be reaped by its parent.
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"


def test_http_infer_doubles_the_input(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.http_address)
    assert client.is_server_ready()
    assert client.get_model_config("double")["max_batch_size"] == 8
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for binary in (True, False):
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("double", [tensor])
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


def test_grpc_infer_doubles_the_input(server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=server.grpc_address)
    assert client.is_model_ready("double")
    assert client.get_model_metadata("double").inputs[0].shape == [-1, 4]
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("double", [tensor])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


def test_concurrent_requests_are_batched_dynamically(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.http_address, concurrency=16)
    before = client.get_inference_statistics("double")["model_stats"][0]
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(16)]
    pending = []
    for row in rows:
        tensor = httpclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(row)
        pending.append(client.async_infer("double", [tensor]))
    for row, request in zip(rows, pending):
        np.testing.assert_array_equal(request.get_result().as_numpy("y"), row * 2)
    after = client.get_inference_statistics("double")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 16
    # 16 requests in flight at once against a 50 ms batching window: far fewer executions.
    assert executions < inferences


def test_stop_ends_the_server_and_its_stubs(tmp_path):
    server = _tritonserver.TritonServer(write_double(tmp_path), model_control="explicit", load=["double"])
    server.start()
    tree = _tritonserver.process_tree(server.pid)
    assert len(tree) >= 2, "the server should have started a Python-backend stub"
    server.stop()
    server.stop()  # idempotent
    assert not server.is_running
    assert not any(_alive(pid) for pid in tree)


def test_explicit_mode_loads_only_what_it_is_told(tmp_path):
    import tritonclient.http as httpclient

    with _tritonserver.TritonServer(write_double(tmp_path), model_control="explicit") as server:
        client = httpclient.InferenceServerClient(url=server.http_address)
        assert not client.is_model_ready("double")
        client.load_model("double")
        assert client.is_model_ready("double")


def test_a_broken_model_fails_start_with_the_log(tmp_path):
    broken = DOUBLE_CONFIG.replace('data_type: TYPE_FP32 dims: [ 4 ] } ]\noutput', 'data_type: TYPE_NOPE } ]\noutput')
    server = _tritonserver.TritonServer(write_double(tmp_path, broken))
    with pytest.raises(ServerStateError, match="exited during start-up") as caught:
        server.start(timeout_s=60)
    assert "TYPE_NOPE" in str(caught.value)  # the log tail names what was wrong
    assert not server.is_running


def _export_and_compare(tmp_path, registry, fn, name):
    import tritonclient.http as httpclient

    from nbserve.repository import write_repository

    example = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    model = registry.register(fn, name=name, example=example, max_batch_size=16)
    expected = model.infer({"x": example})["output_0"]
    repository = write_repository(tmp_path / "repo", registry)
    with _tritonserver.TritonServer(repository) as server:
        client = httpclient.InferenceServerClient(url=server.http_address)
        tensor = httpclient.InferInput("x", list(example.shape), "FP32")
        tensor.set_data_from_numpy(example)
        got = client.infer(name, [tensor]).as_numpy("output_0")
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_nbserve_export_of_a_callable_loads_and_matches(tmp_path, registry):
    _export_and_compare(tmp_path, registry, lambda x: np.tanh(x) * 2, "tanh2")


_NUMPY2 = int(np.__version__.split(".")[0]) >= 2


@pytest.mark.xfail(
    _NUMPY2,
    raises=ServerStateError,
    strict=True,
    reason="Triton 2.51's Python-backend stub needs NumPy < 2 (see nbserve._tritonserver), and NumPy 1 "
    "cannot unpickle arrays that cloudpickle wrote under NumPy 2 ('No module named numpy._core')",
)
def test_nbserve_export_of_a_callable_holding_arrays_loads_and_matches(tmp_path, registry):
    weights = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)

    def linear(x):
        return np.maximum(x @ weights, 0)

    _export_and_compare(tmp_path, registry, linear, "linear")


def test_perf_analyzer_is_found_or_explained():
    path = _tritonserver.perf_analyzer_path(fetch=False)
    reason = _tritonserver.perf_analyzer_unavailable_reason()
    assert (path is None) != (reason is None)
    if path is not None:
        assert path.exists() and os.access(path, os.X_OK)
    else:
        assert reason


def test_stop_ends_the_stubs_of_a_server_that_was_killed(tmp_path):
    import signal

    server = _tritonserver.TritonServer(write_double(tmp_path))
    server.start()
    stubs = _tritonserver.process_tree(server.pid)[1:]
    assert stubs
    os.kill(server.pid, signal.SIGKILL)  # as if it crashed: its stubs are re-parented, not ended
    deadline = time.monotonic() + 10
    while server.returncode is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling its exit status with a deadline
    server.stop()
    assert server.returncode == -signal.SIGKILL
    assert not any(_alive(pid) for pid in stubs)
