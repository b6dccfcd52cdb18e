"""README.md, kserve.yaml and the docker line: generated from the written configs, and they work."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pytest

import nbserve
from nbserve.config import build_config
from nbserve.export import docs

from export_models import register_pipeline, register_python


def test_docker_line_fits_the_models():
    cpu = build_config(name="m", inputs=[("x", [4], "FP32")], outputs=[("y", [1], "FP32")], max_batch_size=8,
                       backend="onnxruntime")
    line = docs.docker_run_line("/srv/my repo", [cpu])
    assert shlex.split(line) == ["docker", "run", "--rm", "-p", "8000:8000", "-p", "8001:8001", "-p", "8002:8002",
                                 "-v", "/srv/my repo:/models", docs.TRITON_IMAGE, "tritonserver",
                                 "--model-repository=/models"]
    python_gpu = build_config(name="p", inputs=[("x", [4], "FP32")], outputs=[("y", [1], "FP32")], max_batch_size=8,
                              backend="python", instance_kind="gpu", instances=1)
    args = shlex.split(docs.docker_run_line("/srv/r", [python_gpu], requirements=["p/requirements.txt"]))
    assert "--gpus=all" in args and "--shm-size=1g" in args
    assert args[-3:] == ["bash", "-c", "pip install --quiet -r /models/p/requirements.txt && "
                                       "tritonserver --model-repository=/models"]


def test_kserve_manifest_is_a_valid_inference_service(registry, tmp_path):
    yaml = pytest.importorskip("yaml")
    register_python(registry)
    report = nbserve.export(tmp_path / "Fraud_Models v2", registry=registry)
    manifest = yaml.safe_load((report.path / "kserve.yaml").read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    name = manifest["metadata"]["name"]
    assert name == "fraud-models-v2" and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["runtimeVersion"] == f"{docs.TRITON_VERSION}-py3"
    assert model["storageUri"] == "pvc://nbserve-models/Fraud_Models v2"
    assert "nvidia.com/gpu" not in model["resources"]["limits"]


def test_readme_lists_every_tensor(registry, tmp_path):
    register_python(registry)
    report = nbserve.export(tmp_path / "repo", registry=registry)
    readme = (report.path / "README.md").read_text()
    assert "| `affine` | Python backend | 1 | max_batch_size 16, dynamic (max_queue_delay_microseconds 20000, " \
           "preferred_batch_size [4, 8]) | 2 x CPU |" in readme
    for row in ("| `x` | input | FP32 | [-1, 4] |", "| `output_0` | output | FP32 | [-1, 3] |",
                "| `text` | input | BYTES | [-1, 1] |", "| `count` | output | INT32 | [-1, 1] |",
                "| `upper` | output | BYTES | [-1, 1] |"):
        assert row in readme


def test_readme_client_examples_run_against_the_served_repository(registry, tmp_path, capsys):
    """Each generated tritonclient script runs unchanged against the repository, served here by nbserve."""
    register_python(registry)
    register_pipeline(registry)
    report = nbserve.export(tmp_path / "repo", registry=registry)
    readme = (report.path / "README.md").read_text()
    scripts = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(scripts) == 4  # affine, pipeline, and its steps score and words (models of their own)
    back = nbserve.read_repository(report.path)
    server = nbserve.Server(back, grpc=False, metrics=False).start()
    try:
        for script in scripts:
            exec(compile(script.replace("localhost:8000", server.http_address), "README.md", "exec"), {})
    finally:
        server.stop()
        back.clear()
    printed = capsys.readouterr().out
    assert "output_0 [[" in printed and "shout [[b'HELLO WORLD']]" in printed and "score [[2.]]" in printed


def test_client_example_shapes_follow_the_config():
    fixed = build_config(name="f", inputs=[("ids", [-1], "INT64"), ("flag", [2], "BOOL")],
                         outputs=[("y", [1], "FP32")], max_batch_size=0)
    code = docs.client_example(fixed, url="triton:8000")
    assert 'httpclient.InferInput("ids", [1], "INT64")' in code and 'dtype="int64"' in code
    assert 'httpclient.InferInput("flag", [2], "BOOL")' in code and 'dtype="bool"' in code
    assert 'url="triton:8000"' in code
    compile(code, "example", "exec")
    np.testing.assert_equal(docs.example_shape(fixed, [-1, 3]), [1, 3])
