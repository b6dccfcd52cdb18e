"""The Python backend: plain callables over NumPy (torch and CuPy arrays pass through)."""

from __future__ import annotations

import numpy as np
import pytest

from nbserve.backends import _python_runtime, _triton_shim
from nbserve.backends import python as python_backend
from nbserve.errors import SignatureError
from nbserve.repository import write_repository
from nbserve.tensors import TensorSpec

X = np.arange(6, dtype=np.float32).reshape(2, 3)
TEXT = np.array([[b"ab"], ["ça".encode()]], dtype=object)


# ----------------------------------------------------------------------------- batched vs per item
def test_batched_callable_sees_the_whole_batch(registry):
    seen = []

    def total(x):
        seen.append(x.shape)
        return x.sum(axis=1, keepdims=True)

    model = registry.register(total, example=X)
    assert model.outputs == [TensorSpec("output_0", [1], "FP32")]
    assert model.infer({"x": np.ones((5, 3), "float32")})["output_0"].tolist() == [[3.0]] * 5
    assert seen[-1] == (5, 3)


def test_per_item_callable_is_looped_and_stacked(registry):
    seen = []

    def norm(x):
        seen.append(x.shape)
        return float(np.sqrt((x**2).sum()))

    model = registry.register(norm, example=X, batched=False)
    out = model.infer({"x": np.array([[3, 4, 0], [0, 0, 2]], np.float32)})["output_0"]
    assert out.shape == (2, 1)  # a batch of scalars is served as [N, 1]: Triton needs a dim per item
    assert out[:, 0].tolist() == [5.0, 2.0]
    assert seen[-2:] == [(3,), (3,)]  # one item at a time, batch dimension removed
    assert model.config.max_batch_size == 64


def test_per_item_dict_outputs(registry):
    model = registry.register(lambda x: {"first": x[0], "rest": x[1:]}, name="m", example=X, batched=False)
    assert [(s.name, s.dims) for s in model.outputs] == [("first", (1,)), ("rest", (2,))]
    out = model.infer({"x": X})
    assert out["first"].tolist() == [[0.0], [3.0]]
    assert out["rest"].tolist() == [[1.0, 2.0], [4.0, 5.0]]


def test_model_without_batching(registry):
    model = registry.register(lambda x: x.sum(), name="m", example=X, max_batch_size=0)
    assert model.config.max_batch_size == 0 and not model.config.HasField("dynamic_batching")
    assert model.inputs == [TensorSpec("x", [2, 3], "FP32")]
    assert model.infer({"x": X})["output_0"].tolist() == [15.0]


# ----------------------------------------------------------------------------- outputs
def test_single_output(registry):
    model = registry.register(lambda x: x + 1, name="m", example=X)
    assert [s.name for s in model.outputs] == ["output_0"]


def test_tuple_outputs_in_order(registry):
    model = registry.register(lambda x: (x + 1, x.sum(1)), name="m", example=X)
    assert [(s.name, s.dims) for s in model.outputs] == [("output_0", (3,)), ("output_1", (1,))]
    named = registry.register(lambda x: (x + 1, x.sum(1)), name="n", example=X, outputs=["plus", "total"])
    out = named.infer({"x": X})
    assert sorted(out) == ["plus", "total"]
    assert out["total"].tolist() == [[3.0], [12.0]]


def test_list_of_arrays_is_several_outputs_but_a_list_of_numbers_is_one(registry):
    several = registry.register(lambda x: [x, x], name="several", example=X)
    assert len(several.outputs) == 2
    one = registry.register(lambda x: [float(v) for v in x.sum(1)], name="one", example=X)
    assert one.outputs == [TensorSpec("output_0", [1], "FP64")]
    assert one.infer({"x": X})["output_0"].tolist() == [[3.0], [12.0]]


def test_dict_outputs_keep_their_names(registry):
    model = registry.register(lambda x: {"mean": x.mean(1), "max": x.max(1)}, name="m", example=X)
    assert [s.name for s in model.outputs] == ["mean", "max"]


def test_declared_output_dtype_casts_results(registry):
    model = registry.register(
        lambda x: x.astype(np.float64),
        name="m",
        inputs=[TensorSpec("x", [3], "FP32")],
        outputs=[TensorSpec("y", [3], "FP64")],
    )
    assert model.infer({"x": X})["y"].dtype == np.float64
    runner = _python_runtime.CallableRunner(lambda x: x * 2, ["x"], ["y"], {"y": "INT16"})
    assert runner({"x": X})["y"].dtype == np.int16


def test_declared_signature_without_example_is_not_called_at_registration(registry):
    calls = []

    def fn(x):
        calls.append(x.shape)
        return x

    model = registry.register(fn, inputs=[("x", [-1], "INT32")], outputs=[("y", [-1], "INT32")])
    assert calls == []
    assert model.infer({"x": np.ones((2, 5), "int32")})["y"].shape == (2, 5)


def test_declared_inputs_alone_synthesize_an_example(registry):
    model = registry.register(lambda x: x.sum(1), name="m", inputs=[TensorSpec("x", [-1], "INT32")])
    assert model.outputs == [TensorSpec("output_0", [1], "INT64")]


# ----------------------------------------------------------------------------- calling conventions
def test_keyword_calling_matches_names_not_order(registry):
    def diff(b, a):  # parameter order differs from the input order
        return b - a

    model = registry.register(diff, inputs=["a", "b"], example={"a": X, "b": X * 3})
    assert model.latest.runner.keyword is True
    assert model.infer({"b": X * 3, "a": X})["output_0"].tolist() == (X * 2).tolist()


def test_var_keyword_callable(registry):
    model = registry.register(lambda **t: t["b"] - t["a"], name="m", inputs=["a", "b"], example={"a": X, "b": X})
    assert model.latest.runner.keyword is True
    assert [s.name for s in model.inputs] == ["a", "b"]


def test_positional_calling_when_names_differ(registry):
    def diff(p, q):
        return p - q

    model = registry.register(diff, inputs=["a", "b"], example={"a": X, "b": X * 3})
    assert model.latest.runner.keyword is False
    assert model.infer({"a": X, "b": X * 3})["output_0"].tolist() == (-2 * X).tolist()


def test_parameter_names_become_input_names(registry):
    model = registry.register(lambda features, mask: features * mask, name="m", example=(X, np.ones_like(X)))
    assert [s.name for s in model.inputs] == ["features", "mask"]


def test_callable_objects_are_served(registry):
    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        def __call__(self, x):
            return x * self.factor

    model = registry.register(Scaler(4), example=X)
    assert model.name == "scaler"
    assert model.infer({"x": X})["output_0"][1, 0] == 12


# ----------------------------------------------------------------------------- BYTES
def test_bytes_in_and_out(registry):
    def shout(text):
        return np.array([[t.decode().upper() + "!"] for t in text[:, 0]])  # a str array comes back

    model = registry.register(shout, example=TEXT)
    assert model.inputs == [TensorSpec("text", [1], "BYTES")]
    assert model.outputs == [TensorSpec("output_0", [1], "BYTES")]
    out = model.infer({"text": [["hi"], ["ça"]]})["output_0"]  # lists of str are accepted as BYTES
    assert out.dtype == object
    assert out.tolist() == [[b"HI!"], ["ÇA!".encode()]]


def test_declared_bytes_output_encodes_numbers_as_text(registry):
    model = registry.register(lambda x: x.astype(int).astype(object), name="m", example=X,
                              outputs=[TensorSpec("y", [3], "BYTES")])
    assert model.infer({"x": X[:1]})["y"].tolist() == [[b"0", b"1", b"2"]]


def test_bytes_per_item(registry):
    model = registry.register(lambda text: text[0][::-1], name="rev", example=TEXT, batched=False)
    assert model.infer({"text": np.array([[b"abc"], [b"z"]], dtype=object)})["output_0"].tolist() == [[b"cba"], [b"z"]]


def test_str_example_becomes_bytes(registry):
    model = registry.register(lambda text: np.char.str_len(text.astype(str)), name="m",
                              example=np.array([["a"], ["bcd"]]))
    assert model.inputs[0].dtype == "BYTES"
    assert model.infer({"text": np.array([[b"hello"]], dtype=object)})["output_0"].tolist() == [[5]]


# ----------------------------------------------------------------------------- runtime
def test_run_requests_merges_and_splits():
    runner = _python_runtime.CallableRunner(lambda x: x * 10, ["x"])
    results = _python_runtime.run_requests(runner, [{"x": X[:1]}, {"x": X}, {"x": X[1:]}])
    assert [r["output_0"].shape for r in results] == [(1, 3), (2, 3), (1, 3)]
    np.testing.assert_array_equal(results[1]["output_0"], X * 10)
    np.testing.assert_array_equal(results[2]["output_0"], X[1:] * 10)


def test_run_requests_without_a_batch_dimension_runs_each_request():
    runner = _python_runtime.CallableRunner(lambda x: x.sum(axis=0), ["x"], batch_dim=False)
    results = _python_runtime.run_requests(runner, [{"x": X}, {"x": X[:1]}])
    assert [r["output_0"].tolist() for r in results] == [[3.0, 5.0, 7.0], [0.0, 1.0, 2.0]]


def test_output_count_mismatch_is_explained():
    runner = _python_runtime.CallableRunner(lambda x: (x, x), ["x"], ["only"])
    with pytest.raises(ValueError, match="returned 2 outputs but 1 are declared"):
        runner({"x": X})


def test_runtime_imports_only_numpy_and_the_standard_library():
    source = python_backend.model_py_source()
    import ast

    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"json", "os", "inspect", "numpy", "torch", "cupy", "cloudpickle",
                        "triton_python_backend_utils"}


def test_exported_model_py_batches_several_requests(registry, tmp_path):
    """The written model.py, run the way Triton runs it: several requests in one execute()."""
    model = registry.register(lambda x, text: {"y": x * 2, "n": np.array([[len(t)] for t in text[:, 0]])},
                              name="m", example={"x": X, "text": TEXT})
    repo = write_repository(tmp_path / "repo", registry)
    instance = python_backend.load_python_model(model.config, repo / "m" / "1")
    requests = [
        _triton_shim.InferenceRequest([_triton_shim.Tensor("x", X[:1]), _triton_shim.Tensor("text", TEXT[:1])],
                                      ["y", "n"]),
        _triton_shim.InferenceRequest([_triton_shim.Tensor("x", X), _triton_shim.Tensor("text", TEXT)], ["n"]),
    ]
    first, second = instance.execute(requests)
    assert first.error() is None and second.error() is None
    first_out = {t.name(): t.as_numpy() for t in first.output_tensors()}
    second_out = {t.name(): t.as_numpy() for t in second.output_tensors()}
    assert sorted(first_out) == ["n", "y"] and sorted(second_out) == ["n"]  # requested outputs only
    np.testing.assert_array_equal(first_out["y"], X[:1] * 2)
    assert second_out["n"].tolist() == [[2], [3]]
    instance.finalize()


def test_exported_model_py_reports_errors_per_request(registry, tmp_path):
    def picky(x):
        if (x < 0).any():
            raise ValueError("negative input")
        return x

    model = registry.register(picky, example=X)
    repo = write_repository(tmp_path / "repo", registry)
    instance = python_backend.load_python_model(model.config, repo / "picky" / "1")
    responses = instance.execute([_triton_shim.InferenceRequest([_triton_shim.Tensor("x", -X)], ["output_0"])])
    assert responses[0].has_error()
    assert "ValueError: negative input" in responses[0].error().message()


# ----------------------------------------------------------------------------- other array libraries
def test_torch_tensors_pass_through(registry):
    torch = pytest.importorskip("torch")
    model = registry.register(lambda x: x * 2, name="m", example=torch.ones(2, 3))
    assert model.framework == "python"
    out = model.infer({"x": torch.ones(1, 3)})["output_0"]
    assert isinstance(out, torch.Tensor) and out.tolist() == [[2.0, 2.0, 2.0]]


def _gpu_count() -> int:
    cupy = pytest.importorskip("cupy")
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no driver: CuPy raises its own CUDA errors
        return 0


@pytest.mark.gpu
def test_cupy_arrays_stay_on_the_device(registry):
    if not _gpu_count():
        pytest.skip("needs an NVIDIA GPU")
    import cupy

    model = registry.register(lambda x: x * 2, name="m", example=cupy.ones((2, 3), dtype=cupy.float32))
    assert model.latest.device == "gpu"
    assert model.config.instance_group[0].kind == model.config.instance_group[0].KIND_GPU
    out = model.infer({"x": cupy.ones((1, 3), dtype=cupy.float32)})["output_0"]
    assert isinstance(out, cupy.ndarray)
    assert out.get().tolist() == [[2.0, 2.0, 2.0]]


def test_signature_errors_name_the_model(registry):
    with pytest.raises(SignatureError, match="model 'broken'.*Fix:"):
        registry.register(lambda x: x.missing_attribute, name="broken", example=X)
