"""A TensorRT engine built from an ONNX model, as a Triton ``tensorrt_plan`` model (``model.plan``).
Needs an NVIDIA GPU and ``pip install "nbserve[gpu]"``; without them it says so and exits 0.

    python examples/tensorrt_engine.py [REPOSITORY_DIR]

Inputs are copied to the GPU once, the engine runs on the current CUDA stream, and the outputs stay
on the GPU until the client's answer is written. A plan is tied to the GPU and TensorRT version
that built it, so build the export where it will run.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

import nbserve


def gpu_ready() -> str | None:
    """None when TensorRT and a CUDA device are here, else why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return 'the tensorrt package is not installed (pip install "nbserve[gpu]")'
    try:
        import torch

        if torch.cuda.is_available():
            return None
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
    except Exception:
        pass
    return "no CUDA device is visible"


def small_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["scores"])], "scorer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def main(out: str, scratch: Path) -> int:
    why = gpu_ready()
    if why is not None:
        print(f"skipped: TensorRT needs an NVIDIA GPU: {why}")
        return 0
    import tritonclient.http as httpclient

    onnx_path = small_onnx(scratch / "scorer.onnx")
    nbserve.register(str(onnx_path), name="scorer", framework="tensorrt", max_batch_size=64)
    print(nbserve.get("scorer").pbtxt)
    x = np.random.default_rng(1).normal(size=(8, 16)).astype("float32")
    with nbserve.serve() as server:
        client = httpclient.InferenceServerClient(server.http_address)
        request = httpclient.InferInput("x", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        scores = client.infer("scorer", [request]).as_numpy("scores")
    w = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    np.testing.assert_allclose(scores, np.maximum(x @ w, 0), rtol=1e-2, atol=1e-2)  # TF32 on recent GPUs
    print("scores match NumPy:", scores.shape)
    report = nbserve.export(out)
    print(report)
    print(nbserve.validate(report.path).summary())
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else f"{scratch}/model_repository", Path(scratch)))
