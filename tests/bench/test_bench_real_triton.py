"""nbserve.bench against the real Triton Inference Server, by URL, over HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import pytest

from nbserve import _tritonserver
from nbserve.bench.run import bench

from bench_helpers import FAST, bench_threads, generator_processes

pytestmark = [pytest.mark.triton, pytest.mark.slow]

_reason = _tritonserver.unavailable_reason()
if _reason is not None:
    pytestmark.append(pytest.mark.skip(reason=f"real tritonserver unavailable: {_reason}"))

CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

MODEL_PY = '''\
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({sleep_s})
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", x * 2)]))
        return responses
'''


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    repository = tmp_path_factory.mktemp("repo")
    for name, sleep_s in (("double", 0.0), ("slow", 0.010)):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (repository / name / "1" / "model.py").write_text(MODEL_PY.format(sleep_s=sleep_s))
    with _tritonserver.TritonServer(repository).start(timeout_s=90) as server:
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_counts_equal_tritons_statistics(triton, protocol):
    address = triton.http_address if protocol == "http" else triton.grpc_address
    run = bench(f"{protocol}://{address}", "double", concurrency=[1, 4], **FAST)
    for row in run.rows:
        assert row["total_sent"] == row["total_ok"] == row["server_total_requests"] > 0
        assert row["server_queue_ms"] is not None and row["server_compute_infer_ms"] is not None
        assert max(row["server_batch_sizes"]) <= 8
    assert not run.errors and bench_threads() == [] and generator_processes() == []


def test_latency_of_a_triton_model_with_a_known_delay(triton):
    run = bench(triton, "slow", concurrency=[1], protocol="grpc", measurement_interval_ms=400, warmup_s=0.2,
                stability_windows=2, max_windows=3, live=False)
    (row,) = run.rows
    # The model sleeps 10 ms; Triton's Python backend adds its stub round trip (about 0.5 ms on a
    # quiet machine, several ms on a loaded 2-core one). Never less than the sleep.
    assert 10.0 <= row["p50_ms"] <= 20.0, run.table()
    assert 10.0 <= row["server_compute_infer_ms"] <= 18.0, run.table()
    assert row["server_compute_infer_ms"] <= row["p50_ms"] + 1


def test_batched_requests_and_user_inputs(triton):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    run = bench(triton, "double", concurrency=[2], inputs={"x": x}, protocol="http", **FAST)
    (row,) = run.rows
    assert row["infer_per_s"] == pytest.approx(2 * row["requests_per_s"])
    assert row["server_inferences"] % 2 == 0
