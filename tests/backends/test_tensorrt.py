"""The TensorRT backend: clear errors without TensorRT or a GPU; engines where both exist."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from nbserve.backends import tensorrt as trt_backend
from nbserve.config import build_config, render
from nbserve.errors import ConfigError, MissingDependency
from nbserve.registry import Registry
from nbserve.repository import read_repository

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def test_matches_engines_and_plan_paths():
    assert trt_backend.matches("model.plan")
    assert trt_backend.matches("build/encoder.engine")
    from pathlib import Path

    assert trt_backend.matches(Path("model.PLAN"))
    assert not trt_backend.matches("model.onnx")  # ONNX goes to the onnx backend unless framework="tensorrt"
    assert not trt_backend.matches(lambda x: x)


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed")
@pytest.mark.parametrize("obj, framework", [("model.plan", None), ("model.onnx", "tensorrt")])
def test_missing_tensorrt_names_the_extra(obj, framework):
    with pytest.raises(MissingDependency) as info:
        Registry().register(obj, name="engine", framework=framework)
    message = str(info.value)
    assert "'tensorrt' package" in message and "TensorRT engine" in message
    assert 'pip install "nbserve[gpu]"' in message
    assert isinstance(info.value, ImportError)


@pytest.mark.skipif(cuda_available(), reason="a GPU is present")
def test_no_gpu_is_a_clear_error(monkeypatch):
    # The package alone is not enough: stand one in to reach the GPU check on this GPU-less machine.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(ConfigError) as info:
        Registry().register("model.plan", name="engine")
    message = str(info.value)
    assert "NVIDIA GPU" in message and "no GPU is available" in message
    assert 'pip install "nbserve[gpu]"' in message


def test_reads_tensorrt_plan_configs(tmp_path):
    config = build_config(
        name="engine", inputs=[("x", [4], "FP32")], outputs=[("y", [3], "FP32")], max_batch_size=8,
        platform="tensorrt_plan",
    )
    assert trt_backend.reads(config)
    assert not trt_backend.reads(build_config(name="o", outputs=[("y", [1], "FP32")], platform="onnxruntime_onnx"))
    model_dir = tmp_path / "repo" / "engine"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.plan").write_bytes(b"not an engine")
    (model_dir / "config.pbtxt").write_text(render(config))
    if not HAVE_TENSORRT:
        with pytest.raises(MissingDependency, match=r'nbserve\[gpu\]'):
            read_repository(tmp_path / "repo")


# ----------------------------------------------------------------------------- with a GPU
def onnx_mlp_bytes(torch):
    import io

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    buffer = io.BytesIO()
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(net, (torch.zeros(2, 4),), buffer, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return net, buffer.getvalue()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TENSORRT and cuda_available()), reason="needs tensorrt and a CUDA GPU")
def test_engine_built_from_onnx_runs_and_round_trips(tmp_path):
    import torch

    from nbserve.repository import write_repository

    net, data = onnx_mlp_bytes(torch)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(data)
    registered = Registry().register(path, name="mlp_trt", framework="tensorrt", max_batch_size=16)
    assert registered.config.platform == "tensorrt_plan" and registered.config.max_batch_size == 16
    assert [(s.name, s.dims) for s in registered.inputs] == [("x", (4,))]
    batch = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    result = registered.infer({"x": batch})["y"]
    assert result.is_cuda  # outputs stay on the GPU
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(result.cpu().numpy(), expected, rtol=1e-2, atol=1e-3)

    repo = write_repository(tmp_path / "repo", [registered])
    assert (repo / "mlp_trt" / "1" / "model.plan").is_file()
    loaded = read_repository(repo).get("mlp_trt")
    np.testing.assert_allclose(loaded.infer({"x": batch})["y"].cpu().numpy(), result.cpu().numpy(), rtol=1e-5)
