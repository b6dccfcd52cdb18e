"""The torch backend: eager and TorchScript modules, in the kernel and through a Triton repository."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from nbserve.config import parse  # noqa: E402
from nbserve.errors import SignatureError  # noqa: E402
from nbserve.registry import Registry  # noqa: E402
from nbserve.repository import read_repository, write_repository  # noqa: E402
from nbserve.tensors import TensorSpec  # noqa: E402
from nbserve.backends import torch as torch_backend  # noqa: E402


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


class TwoInputs(torch.nn.Module):
    """Two named inputs, a dict output; one output has no per-item dimension."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, features: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.linear(features) * scale, "total": features.sum(1)}


class NotScriptable(torch.nn.Module):
    """TorchScript cannot compile a lambda attribute, so export has to trace."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.activation = lambda t: t.clamp(min=0) * 2

    def forward(self, x):
        return self.activation(self.linear(x))


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)


def eager(model: torch.nn.Module, *args: np.ndarray):
    with torch.no_grad():
        return model(*(torch.from_numpy(a) for a in args))


def roundtrip(tmp_path, model, **options):
    """Write ``model`` to a repository, check its config file, and read it back."""
    repo = write_repository(tmp_path / "repo", [model], options=options or None)
    config = parse((repo / model.name / "config.pbtxt").read_text())
    return config, repo / model.name / "1", read_repository(repo).get(model.name)


def test_sequential_signature_infer_and_repository_roundtrip(tmp_path, batch):
    model = mlp()
    registered = Registry().register(model, name="mlp", example=batch)

    config = registered.config
    assert config.platform == "pytorch_libtorch"
    assert config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    assert [(s.name, s.dtype, s.dims) for s in registered.inputs] == [("input", "FP32", (4,))]
    assert [(s.name, s.dtype, s.dims) for s in registered.outputs] == [("output__0", "FP32", (3,))]
    assert registered.framework == "torch"

    result = registered.infer({"input": batch})["output__0"]
    assert isinstance(result, np.ndarray)
    np.testing.assert_allclose(result, eager(model, batch).numpy(), rtol=1e-6)

    written, version_dir, loaded = roundtrip(tmp_path, registered)
    assert written.platform == "pytorch_libtorch"
    assert [t.name for t in written.input] == ["input"] and [t.name for t in written.output] == ["output__0"]
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.pt"]
    assert loaded.framework == "torch"
    np.testing.assert_allclose(loaded.infer({"input": batch})["output__0"], result, rtol=1e-6)


def test_two_inputs_and_dict_output(tmp_path, batch):
    model = TwoInputs()
    scale = np.full((5, 1), 2.0, np.float32)
    # A dict example may list the inputs in any order: forward()'s order wins.
    registered = Registry().register(model, name="two", example={"scale": scale, "features": batch})

    assert [(s.name, s.dims) for s in registered.inputs] == [("features", (4,)), ("scale", (1,))]
    assert [(s.name, s.dims) for s in registered.outputs] == [("logits__0", (3,)), ("total__1", (1,))]

    expected = eager(model, batch, scale)
    result = registered.infer({"features": batch, "scale": scale})
    np.testing.assert_allclose(result["logits__0"], expected["logits"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(result["total__1"], expected["total"].numpy()[:, None], rtol=1e-6)

    written, version_dir, loaded = roundtrip(tmp_path, registered)
    # Triton's PyTorch backend takes a tuple back: the exported module returns one, named as before.
    assert torch.jit.load(str(version_dir / "model.pt")).forward.schema.arguments[1].name == "features"
    assert [t.name for t in written.output] == ["logits__0", "total__1"]
    assert written.output[1].HasField("reshape") and list(written.output[1].reshape.shape) == []
    again = loaded.infer({"features": batch, "scale": scale})
    for key in result:
        np.testing.assert_allclose(again[key], result[key], rtol=1e-6)


def test_torchscript_module(tmp_path, batch):
    model = torch.jit.script(mlp())
    registered = Registry().register(model, name="scripted", example=batch)
    assert [s.name for s in registered.inputs] == ["input"]
    result = registered.infer({"input": batch})["output__0"]
    np.testing.assert_allclose(result, eager(model, batch).numpy(), rtol=1e-6)

    written, _, loaded = roundtrip(tmp_path, registered)
    assert written.platform == "pytorch_libtorch"
    np.testing.assert_allclose(loaded.infer({"input": batch})["output__0"], result, rtol=1e-6)


def test_onnx_export_reads_back_through_onnxruntime(tmp_path, batch):
    model = TwoInputs()
    scale = np.full((5, 1), 0.5, np.float32)
    registered = Registry().register(model, name="two", example=(batch, scale))
    result = registered.infer({"features": batch, "scale": scale})

    written, version_dir, loaded = roundtrip(tmp_path, registered, torch_format="onnx")
    assert written.platform == "onnxruntime_onnx"
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.onnx"]
    assert [t.name for t in written.input] == [t.name for t in registered.config.input]
    assert [t.name for t in written.output] == [t.name for t in registered.config.output]
    assert loaded.framework == "onnx"
    other_batch = np.ones((3, 4), np.float32), np.ones((3, 1), np.float32)  # the batch axis is dynamic
    again = loaded.infer({"features": batch, "scale": scale})
    for key in result:
        np.testing.assert_allclose(again[key], result[key], rtol=1e-5, atol=1e-6)
    assert loaded.infer(dict(zip(["features", "scale"], other_batch)))["logits__0"].shape == (3, 3)


def test_torch_format_at_registration_sets_the_platform(tmp_path, batch):
    registered = Registry().register(mlp(), name="mlp", example=batch, torch_format="onnx")
    assert registered.config.platform == "onnxruntime_onnx"
    written, version_dir, loaded = roundtrip(tmp_path, registered)
    assert written.platform == "onnxruntime_onnx" and (version_dir / "model.onnx").is_file()
    np.testing.assert_allclose(
        loaded.infer({"input": batch})["output__0"], registered.infer({"input": batch})["output__0"],
        rtol=1e-5, atol=1e-6,
    )


def test_export_traces_what_cannot_be_scripted(tmp_path, batch):
    model = NotScriptable()
    registered = Registry().register(model, name="traced", example=batch)
    result = registered.infer({"x": batch})["output__0"]
    np.testing.assert_allclose(result, eager(model, batch).numpy(), rtol=1e-6)
    _, _, loaded = roundtrip(tmp_path, registered)
    np.testing.assert_allclose(loaded.infer({"x": batch})["output__0"], result, rtol=1e-6)


def test_renamed_tensors_bind_by_order(tmp_path, batch):
    registered = Registry().register(mlp(), name="renamed", inputs=["x"], outputs=["y"], example=batch)
    assert [s.name for s in registered.inputs] == ["x"] and [s.name for s in registered.outputs] == ["y"]
    result = registered.infer({"x": batch})["y"]
    _, _, loaded = roundtrip(tmp_path, registered)
    np.testing.assert_allclose(loaded.infer({"x": batch})["y"], result, rtol=1e-6)


def test_declared_signature_without_example(batch):
    registered = Registry().register(
        mlp(), name="declared", inputs=[TensorSpec("input", [4], "FP32")], outputs=[TensorSpec("output__0", [3])]
    )
    assert registered.infer({"input": batch})["output__0"].shape == (5, 3)


def test_without_batching(batch):
    registered = Registry().register(mlp(), name="fixed", example=batch, max_batch_size=0)
    assert registered.config.max_batch_size == 0 and not registered.config.HasField("dynamic_batching")
    assert registered.inputs[0].dims == (5, 4)
    assert registered.infer({"input": batch})["output__0"].shape == (5, 3)


def test_read_only_request_arrays_are_used_without_a_copy_or_warning(batch):
    registered = Registry().register(mlp(), name="mlp", example=batch)
    frozen = np.frombuffer(batch.tobytes(), dtype=np.float32).reshape(5, 4)  # like a decoded request body
    assert not frozen.flags.writeable
    np.testing.assert_allclose(
        registered.infer({"input": frozen})["output__0"], registered.infer({"input": batch})["output__0"]
    )


def test_missing_example_says_to_pass_one():
    with pytest.raises(SignatureError, match=r"without an example") as info:
        Registry().register(mlp(), name="mlp")
    assert "example=" in info.value.hint


def test_declared_signature_that_disagrees_names_the_tensor(batch):
    with pytest.raises(SignatureError) as info:
        Registry().register(mlp(), name="mlp", example=batch, inputs=[TensorSpec("input", [5], "FP32")])
    assert info.value.tensor == "input" and "tensor 'input'" in str(info.value)
    with pytest.raises(SignatureError) as info:
        Registry().register(mlp(), name="mlp", example=batch, outputs=[TensorSpec("output__0", [3], "FP64")])
    assert info.value.tensor == "output__0"


def test_example_keyed_by_an_unknown_argument(batch):
    with pytest.raises(SignatureError) as info:
        Registry().register(TwoInputs(), name="two", example={"features": batch, "weights": batch})
    assert info.value.tensor == "weights"


def test_wrong_number_of_output_names(batch):
    with pytest.raises(SignatureError, match="a name is needed for every value"):
        Registry().register(TwoInputs(), name="two", example=(batch, batch[:, :1]), outputs=["only_one"])


def test_failing_forward_is_a_signature_error(batch):
    with pytest.raises(SignatureError, match="running the model on the example failed"):
        Registry().register(mlp(), name="mlp", example=np.ones((2, 7), np.float32))


def test_matches_modules_without_importing_anything():
    assert torch_backend.matches(mlp())
    assert torch_backend.matches(TwoInputs())  # a subclass defined outside torch
    assert torch_backend.matches(torch.jit.script(mlp()))
    assert not torch_backend.matches(lambda x: x)
    assert not torch_backend.matches("model.pt")


def test_triton_naming_rules():
    assert torch_backend.input_positions(["b", "a"], ["a", "b"]) == [1, 0]
    assert torch_backend.input_positions(["x__1", "y__0"], ["a", "b"]) == [1, 0]
    assert torch_backend.input_positions(["x", "y"], ["a", "b"]) == [0, 1]
    assert torch_backend.output_positions(["logits__1", "probs__0"]) == [1, 0]
    assert torch_backend.output_positions(["a__b", "c__1"]) == [0, 1]  # one name off the convention: order


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_keeps_outputs_on_the_device(tmp_path, batch):
    model = mlp().cuda()
    registered = Registry().register(model, name="gpu", example=batch)
    assert registered.latest.device == "gpu"
    assert registered.config.instance_group[0].kind == registered.config.instance_group[0].KIND_GPU
    result = registered.infer({"input": batch})["output__0"]
    assert result.is_cuda
    np.testing.assert_allclose(result.cpu().numpy(), eager(model.cpu(), batch).numpy(), rtol=1e-4, atol=1e-5)
    model.cuda()
    _, _, loaded = roundtrip(tmp_path, registered)
    np.testing.assert_allclose(
        loaded.infer({"input": batch})["output__0"].cpu().numpy(), result.cpu().numpy(), rtol=1e-5
    )


def test_hand_written_repository_with_triton_index_names(tmp_path, batch):
    """A classic Triton PyTorch repository: INPUT__0 / OUTPUT__0 bind by index, not by name."""
    from nbserve.config import build_config, render

    model = TwoInputs()
    scripted = torch.jit.trace(torch_backend._wrapper(_runner_for(model)), (torch.zeros(2, 4), torch.ones(2, 1)))
    version_dir = tmp_path / "repo" / "classic" / "1"
    version_dir.mkdir(parents=True)
    torch.jit.save(scripted, str(version_dir / "model.pt"))
    config = build_config(
        name="classic", max_batch_size=8, platform="pytorch_libtorch",
        # listed out of order on purpose: the index after "__" decides, as in Triton
        inputs=[("INPUT__1", [1], "FP32"), ("INPUT__0", [4], "FP32")],
        outputs=[("OUTPUT__1", [-1], "FP32"), ("OUTPUT__0", [3], "FP32")],
    )
    (version_dir.parent / "config.pbtxt").write_text(render(config))
    loaded = read_repository(tmp_path / "repo").get("classic")
    scale = np.full((5, 1), 3.0, np.float32)
    result = loaded.infer({"INPUT__0": batch, "INPUT__1": scale})
    expected = eager(model, batch, scale)
    np.testing.assert_allclose(result["OUTPUT__0"], expected["logits"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(result["OUTPUT__1"], expected["total"].numpy(), rtol=1e-6)


def _runner_for(model):
    return torch_backend.TorchRunner(
        model, input_names=["features", "scale"], input_positions=[0, 1], output_names=[], output_positions=[],
        output_keys=["logits", "total"], forward_args=["features", "scale"],
    )
