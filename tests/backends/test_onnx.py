"""The ONNX backend: ModelProto, .onnx paths and InferenceSessions, in the kernel and on disk."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nbserve.backends import onnx as onnx_backend  # noqa: E402
from nbserve.config import parse  # noqa: E402
from nbserve.errors import SignatureError  # noqa: E402
from nbserve.registry import Registry  # noqa: E402
from nbserve.repository import read_repository, write_repository  # noqa: E402
from nbserve.tensors import TensorSpec  # noqa: E402

IR_VERSION = 9  # what this onnxruntime reads; newer onnx writes a newer IR by default


def linear_model(batch: str | int = "N") -> onnx.ModelProto:
    """y = relu(x @ W + b), plus a per-row sum of shape [batch] (no per-item dimension)."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["y"]),
        helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, [batch]),
        ],
        [weights, bias, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)


def roundtrip(tmp_path, model):
    repo = write_repository(tmp_path / "repo", [model])
    config = parse((repo / model.name / "config.pbtxt").read_text())
    return config, repo / model.name / "1", read_repository(repo).get(model.name)


def test_model_proto_signature_infer_and_repository_roundtrip(tmp_path, batch):
    model = linear_model()
    registered = Registry().register(model, name="linear")

    config = registered.config
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert [(s.name, s.dtype, s.dims) for s in registered.inputs] == [("x", "FP32", (4,))]
    assert [(s.name, s.dtype, s.dims) for s in registered.outputs] == [("y", "FP32", (3,)), ("total", "FP32", (1,))]
    assert registered.framework == "onnx"

    expected = reference(model, {"x": batch})
    result = registered.infer({"x": batch})
    np.testing.assert_allclose(result["y"], expected["y"], rtol=1e-6)
    np.testing.assert_allclose(result["total"], expected["total"][:, None], rtol=1e-6)  # dims [1] per item

    written, version_dir, loaded = roundtrip(tmp_path, registered)
    assert written.platform == "onnxruntime_onnx"
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.onnx"]
    # Triton needs >= 1 dim per item: the [batch]-shaped output is declared [1] and reshaped.
    total = next(t for t in written.output if t.name == "total")
    assert list(total.dims) == [1] and total.HasField("reshape") and list(total.reshape.shape) == []
    assert loaded.framework == "onnx"
    again = loaded.infer({"x": batch})
    for key in result:
        np.testing.assert_allclose(again[key], result[key], rtol=1e-6)


@pytest.mark.parametrize("as_path", [str, lambda p: p])
def test_path_to_onnx_file(tmp_path, batch, as_path):
    model = linear_model()
    path = tmp_path / "linear.onnx"
    onnx.save(model, str(path))
    registered = Registry().register(as_path(path), name="from_file")
    np.testing.assert_allclose(registered.infer({"x": batch})["y"], reference(model, {"x": batch})["y"], rtol=1e-6)
    _, version_dir, loaded = roundtrip(tmp_path, registered)
    assert (version_dir / "model.onnx").read_bytes() == path.read_bytes()
    np.testing.assert_allclose(loaded.infer({"x": batch})["y"], reference(model, {"x": batch})["y"], rtol=1e-6)


def test_inference_session(tmp_path, batch):
    model = linear_model()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    registered = Registry().register(session, name="session")
    assert registered.latest.device == "cpu"
    np.testing.assert_allclose(registered.infer({"x": batch})["y"], reference(model, {"x": batch})["y"], rtol=1e-6)
    _, _, loaded = roundtrip(tmp_path, registered)
    np.testing.assert_allclose(loaded.infer({"x": batch})["y"], reference(model, {"x": batch})["y"], rtol=1e-6)


def test_exported_from_torch(tmp_path, batch):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    path = tmp_path / "net.onnx"
    with pytest.warns(DeprecationWarning):  # torch's TorchScript-based exporter, which needs no onnxscript
        torch.onnx.export(net, (torch.zeros(2, 4),), str(path), input_names=["features"], output_names=["scores"],
                          dynamic_axes={"features": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False)
    registered = Registry().register(path, name="net")
    assert registered.config.max_batch_size == 64
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(registered.infer({"features": batch})["scores"], expected, rtol=1e-5, atol=1e-6)


def test_fixed_batch_model_does_not_batch(batch):
    registered = Registry().register(linear_model(batch=6), name="fixed")
    assert registered.config.max_batch_size == 0 and not registered.config.HasField("dynamic_batching")
    assert registered.inputs[0].dims == (6, 4) and registered.outputs[1].dims == (6,)
    np.testing.assert_allclose(
        registered.infer({"x": batch})["y"], reference(linear_model(batch=6), {"x": batch})["y"], rtol=1e-6
    )
    with pytest.raises(SignatureError, match="no batch dimension") as info:
        Registry().register(linear_model(batch=6), name="fixed", max_batch_size=8)
    assert info.value.tensor == "x" and "max_batch_size=0" in info.value.hint


def test_batching_model_registered_without_batching(batch):
    registered = Registry().register(linear_model(), name="whole", max_batch_size=0)
    assert registered.inputs[0].dims == (-1, 4)
    assert registered.infer({"x": batch})["y"].shape == (6, 3)


def test_renamed_tensors_are_renamed_in_the_written_model(tmp_path, batch):
    model = linear_model()
    registered = Registry().register(model, name="renamed", inputs=["features"], outputs=["scores", "sum"])
    assert [s.name for s in registered.inputs] == ["features"]
    assert [s.name for s in registered.outputs] == ["scores", "sum"]
    result = registered.infer({"features": batch})
    np.testing.assert_allclose(result["scores"], reference(model, {"x": batch})["y"], rtol=1e-6)

    _, version_dir, loaded = roundtrip(tmp_path, registered)
    written = onnx.load(str(version_dir / "model.onnx"))
    assert [i.name for i in written.graph.input] == ["features"]
    assert [o.name for o in written.graph.output] == ["scores", "sum"]
    again = loaded.infer({"features": batch})
    for key in result:
        np.testing.assert_allclose(again[key], result[key], rtol=1e-6)


def test_declared_signature_is_checked_against_the_graph():
    with pytest.raises(SignatureError) as info:
        Registry().register(linear_model(), name="m", inputs=[TensorSpec("x", [4], "FP64")])
    assert info.value.tensor == "x" and "dtype" in str(info.value)
    with pytest.raises(SignatureError) as info:
        Registry().register(linear_model(), name="m", inputs=[TensorSpec("x", [5], "FP32")])
    assert info.value.tensor == "x" and "dims" in str(info.value)
    with pytest.raises(SignatureError, match="input_names has 2 names"):
        Registry().register(linear_model(), name="m", inputs=["a", "b"])


def test_string_tensors_are_refused():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    with pytest.raises(SignatureError, match="string") as info:
        Registry().register(model, name="strings")
    assert info.value.tensor == "text"


def test_missing_file(tmp_path):
    with pytest.raises(SignatureError, match="not found"):
        Registry().register(str(tmp_path / "nope.onnx"), name="nope")


def test_providers_prefer_tensorrt_then_cuda_then_cpu(monkeypatch):
    available = ["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_backend.pick_providers() == preferred
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_backend.pick_providers() == ["CPUExecutionProvider"]


def test_matches():
    assert onnx_backend.matches(linear_model())
    assert onnx_backend.matches("model.onnx")
    assert not onnx_backend.matches("model.plan")
    assert not onnx_backend.matches(lambda x: x)
    session = ort.InferenceSession(linear_model().SerializeToString(), providers=["CPUExecutionProvider"])
    assert onnx_backend.matches(session)


def test_config_naming_a_tensor_the_graph_lacks(tmp_path):
    from nbserve.config import build_config, render
    from nbserve.errors import ConfigError

    version_dir = tmp_path / "repo" / "linear" / "1"
    version_dir.mkdir(parents=True)
    onnx.save(linear_model(), str(version_dir / "model.onnx"))
    config = build_config(name="linear", max_batch_size=8, platform="onnxruntime_onnx",
                          inputs=[("features", [4], "FP32")], outputs=[("y", [3], "FP32")])
    (version_dir.parent / "config.pbtxt").write_text(render(config))
    with pytest.raises(ConfigError) as info:
        read_repository(tmp_path / "repo")
    assert info.value.tensor == "features" and "'x'" in str(info.value)
