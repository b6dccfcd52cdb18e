"""nbserve.Ensemble without a server: building, Triton-style validation, configs both ways, registering,
writing and reading repositories, the direct runner, and the written ensemble in the real tritonserver."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import nbserve
from nbserve import _tritonserver
from nbserve.config import parse, render
from nbserve.ensemble import Ensemble, Step, plan
from nbserve.errors import ConfigError, InferenceError, InvalidInput, ModelNotReady
from nbserve.repository import read_repository, write_repository

ROOT = Path(__file__).resolve().parents[1]
X2 = np.ones((1, 2), "float32")


def load_readability():
    """examples/readability.py, the pipeline of DESIGN.md, as a module."""
    name = "nbserve_example_readability"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "readability.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def texts(n: int, seed: int = 7) -> np.ndarray:
    return np.array([[t.encode()] for t in load_readability().generated_texts(n, seed)], dtype=object)


@pytest.fixture
def models(registry):
    """Small FP32 models: double/inc/add over [2], a non-batching one, a BYTES one, a narrow batcher."""
    x = np.ones((1, 2), "float32")
    registry.register(lambda x: x * 2, name="double", example=x)
    registry.register(lambda x: x + 1, name="inc", example=x)
    registry.register(lambda a, b: a + b, name="add", example={"a": x, "b": x})
    registry.register(lambda x: x.astype("float64"), name="to64", example=x)
    registry.register(lambda x: x[:, :1], name="first", example=x)
    registry.register(lambda x: x * 3, name="fixed", example=np.ones(2, "float32"), max_batch_size=0)
    registry.register(lambda x: x - 1, name="narrow", example=x, max_batch_size=4)
    registry.register(lambda x: {"twice": x * 2, "neg": -x}, name="two", example=x)
    return registry


def chain(name: str = "chain", **kwargs) -> Ensemble:
    return (Ensemble(name, **kwargs).input("x", "FP32", [2])
            .step("double", inputs={"x": "x"}, outputs={"output_0": "d"})
            .step("inc", inputs={"x": "d"}, outputs={"output_0": "y"})
            .output("y"))


# ----------------------------------------------------------------------------- building
def test_builder_views_and_config(models):
    ens = chain(max_batch_size=8)
    assert [s.model for s in ens.steps] == ["double", "inc"]
    assert ens.steps[0] == Step("double", -1, {"x": "x"}, {"output_0": "d"})
    assert [(s.name, s.dtype, s.dims) for s in ens.inputs] == [("x", "FP32", (2,))]
    assert ens.check(models) == []
    config = ens.to_config(models)
    assert config.platform == "ensemble" and config.max_batch_size == 8 and not config.backend
    assert not config.HasField("dynamic_batching") and not config.instance_group
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("y", 11, [2])]  # dtype from inc
    steps = config.ensemble_scheduling.step
    assert [(s.model_name, s.model_version, dict(s.input_map), dict(s.output_map)) for s in steps] == [
        ("double", -1, {"x": "x"}, {"output_0": "d"}), ("inc", -1, {"x": "d"}, {"output_0": "y"})]
    assert "Ensemble 'chain'" in repr(ens)


def test_config_round_trips_through_pbtxt(models):
    ens = chain(max_batch_size=8)
    ens.step("add", inputs={"a": "d", "b": "y"}, outputs={"output_0": "z"}, version=1).output("z", "FP32", [2])
    config = ens.to_config(models)
    back = Ensemble.from_config(render(config))
    assert back.to_config(models) == config
    assert back.steps[2].version == 1 and back.max_batch_size == 8
    with pytest.raises(ConfigError, match="not an ensemble"):
        Ensemble.from_config(models.get("double").config)


def test_outputs_follow_the_batching_of_the_ensemble(models):
    # A non-batching ensemble passes whole tensors: its dims carry the batch as -1.
    ens = Ensemble("whole", max_batch_size=0).input("x", "FP32", [-1, 2])
    ens.step("double", {"x": "x"}, {"output_0": "y"}).output("y")
    assert [(s.name, s.dims) for s in ens._resolved_outputs(models)] == [("y", (-1, 2))]
    out = models.register(ens).infer({"x": np.ones((3, 2), "float32")})["y"]
    assert out.shape == (3, 2) and (out == 2).all()


def test_connect_builds_the_same_ensemble(models):
    drawn = Ensemble("chain", max_batch_size=8).input("x", "FP32", [2])
    drawn.step("double").step("inc")
    assert drawn.connect(None, "x", "double", "x", models) == "x"
    assert drawn.connect("double", "output_0", "inc", "x", models) == "output_0"
    assert drawn.connect("inc", "output_0", None, "y", models) == "y"
    assert drawn.to_config(models).output[0].name == "y"
    assert drawn.steps[1].outputs == {"output_0": "y"}
    # Connecting an already connected output to an ensemble output renames its tensor everywhere.
    again = Ensemble("again", max_batch_size=8).input("x", "FP32", [2]).step("double").step("inc")
    again.connect(None, "x", "double", "x", models)
    again.connect("double", "output_0", "inc", "x", models)
    again.connect("double", "output_0", None, "doubled", models)
    again.connect("inc", "output_0", None, "y", models)
    assert again.steps[1].inputs == {"x": "doubled"} and again.steps[0].outputs == {"output_0": "doubled"}
    assert [t.name for t in again.to_config(models).output] == ["doubled", "y"]
    with pytest.raises(ConfigError, match="already connected"):
        again.connect(None, "x", "inc", "x", models)


def test_building_errors_name_the_fix():
    with pytest.raises(ConfigError, match="max_batch_size must be an integer >= 0"):
        Ensemble("e", max_batch_size=-1)
    with pytest.raises(ConfigError, match="cannot be a directory name"):
        Ensemble("a/b")
    ens = Ensemble("e").input("x", "FP32", [2])
    with pytest.raises(ConfigError, match="declared twice"):
        ens.input("x", "FP32", [2])
    with pytest.raises(ConfigError, match="must map model tensor names"):
        ens.step("m", inputs={"x": 3})
    with pytest.raises(ConfigError, match=r"version must be -1 \(latest\)"):
        ens.step("m", inputs={"x": "x"}, version=0)
    with pytest.raises(ConfigError, match="unknown data type"):
        ens.input("y", "FLOAT", [1])


# ----------------------------------------------------------------------------- validation
def _fix(ens: Ensemble, models) -> str:
    with pytest.raises(ConfigError) as info:
        ens.check(models)
    return str(info.value)


CASES = {
    "unknown model": (
        lambda: chain().step("dobule", {"x": "y"}, {"output_0": "z"}),
        ["step 'dobule' runs model 'dobule', which is not registered", "did you mean 'double'"]),
    "unknown version": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("double", {"x": "x"}, {"output_0": "y"}, version=3).output("y"),
        ["asks for version 3 of model 'double'", "version=-1"]),
    "read from nowhere": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("double", {"x": "x"}, {"output_0": "d"})
        .step("inc", {"x": "dd"}, {"output_0": "y"}).output("y"),
        ["tensor 'dd' of model 'e': step 'inc' reads it (input 'x') but no ensemble input or step output writes it",
         "did you mean 'd'"]),
    "written twice": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("double", {"x": "x"}, {"output_0": "y"})
        .step("inc", {"x": "x"}, {"output_0": "y"}).output("y"),
        ["tensor 'y'", "step 'double' (output 'output_0') and step 'inc' (output 'output_0') both write this tensor",
         "map one of those outputs to another tensor name"]),
    "writes an ensemble input": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("double", {"x": "x"}, {"output_0": "x"})
        .step("inc", {"x": "x"}, {"output_0": "y"}).output("y"),
        ["step 'double' writes 'x', which is an ensemble input", "map output 'output_0' to another tensor name"]),
    "data type": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("to64", {"x": "x"}, {"output_0": "d"})
        .step("inc", {"x": "d"}, {"output_0": "y"}).output("y"),
        ["tensor 'd'", "step 'to64' output 'output_0' is FP64 [-1, 2] but step 'inc' input 'x' takes FP32 [-1, 2]",
         "the data types differ", "Fix: make both FP64 or both FP32"]),
    "shape": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("first", {"x": "x"}, {"output_0": "d"})
        .step("inc", {"x": "d"}, {"output_0": "y"}).output("y"),
        ["step 'first' output 'output_0' is FP32 [-1, 1] but step 'inc' input 'x' takes FP32 [-1, 2]",
         "the shapes differ"]),
    "batch dimension": (
        lambda: Ensemble("e", max_batch_size=8).input("x", "FP32", [2]).step("fixed", {"x": "x"}, {"output_0": "y"})
        .output("y"),
        ["ensemble input 'x' is FP32 [-1, 2] but step 'fixed' input 'x' takes FP32 [2]",
         "one of them batches", "max_batch_size > 0"]),
    "max batch size": (
        lambda: Ensemble("e", max_batch_size=64).input("x", "FP32", [2]).step("narrow", {"x": "x"}, {"output_0": "y"})
        .output("y"),
        ["takes up to 64 rows per request but step 'narrow' (model 'narrow') takes at most 4",
         "max_batch_size=4"]),
    "cycle": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("add", {"a": "x", "b": "i"}, {"output_0": "a"})
        .step("inc", {"x": "a"}, {"output_0": "i"}).output("i"),
        ["the steps form a cycle: step 'add' -> step 'inc' -> step 'add'"]),
    "output not written": (
        lambda: chain().output("yy"),
        ["tensor 'yy' of model 'chain': ensemble output is not written by any step", "did you mean 'y'"]),
    "unused input": (
        lambda: chain().input("weight", "FP32", [1]),
        ["tensor 'weight'", "ensemble input is not read by any step", 'remove ens.input("weight", ...)']),
    "input not connected": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("add", {"a": "x"}, {"output_0": "y"}).output("y"),
        ["input 'b' of model 'add' is not connected", 'inputs={"b": "tensor", ...}']),
    "unknown model input": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("double", {"x": "x", "xx": "x"}, {"output_0": "y"}).output("y"),
        ["step 'double' maps input 'xx', which model 'double' does not have", "did you mean 'x'"]),
    "unknown model output": (
        lambda: Ensemble("e").input("x", "FP32", [2]).step("double", {"x": "x"}, {"output_1": "y"}).output("y"),
        ["step 'double' maps output 'output_1', which model 'double' does not have", "did you mean 'output_0'"]),
    "itself": (
        lambda: Ensemble("double").input("x", "FP32", [2]).step("double", {"x": "x"}, {"output_0": "y"}).output("y"),
        ["step 'double' runs the ensemble itself"]),
    "empty": (lambda: Ensemble("e"), ["an ensemble needs at least one input", "ens.input("]),
    "declared output disagrees": (
        lambda: chain().step("double", {"x": "y"}, {"output_0": "z"}).output("z", "FP32", [3]),
        ["step #2 'double' output 'output_0' is FP32 [-1, 2] but ensemble output 'z' takes FP32 [-1, 3]"]),
}


@pytest.mark.parametrize("case", CASES)
def test_validation_names_step_tensor_and_fix(models, case):
    build, fragments = CASES[case]
    message = _fix(build(), models)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_stateful_steps_are_refused(models):
    from nbserve.stateful import StateSpec, register_stateful

    def accumulate(x, total):
        return {"sum": total + x, "total": total + x}

    register_stateful(accumulate, name="acc", state=StateSpec("total", [2]), example={"x": X2}, max_batch_size=8,
                      registry=models)
    ens = Ensemble("e", max_batch_size=8).input("x", "FP32", [2]).step("acc", {"x": "x"}, {"sum": "y"}).output("y")
    assert "step 'acc' runs stateful model 'acc' (sequence_batching)" in _fix(ens, models)


def test_every_problem_is_listed(models):
    ens = Ensemble("e").input("x", "FP64", [2]).input("unused", "FP32", [1])
    ens.step("double", {"x": "x"}, {"output_0": "d"}).step("inc", {"x": "nowhere"}, {"output_0": "y"}).output("y")
    with pytest.raises(ConfigError) as info:
        ens.check(models)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 4, problems
    assert "and 3 more" in str(info.value)
    assert any("step 'double' writes nothing that is used" in p for p in problems)
    assert any("nowhere" in p for p in problems) and any("'unused'" in p for p in problems)
    assert any("FP64" in p and "data types differ" in p for p in problems)


def test_unused_outputs_are_warnings_and_left_out(models):
    ens = Ensemble("e", max_batch_size=8).input("x", "FP32", [2])
    ens.step("two", {"x": "x"}, {"twice": "t", "neg": "n"}).step("inc", {"x": "t"}, {"output_0": "y"}).output("y")
    assert ens.check(models) == [
        "step 'two' output 'neg' -> tensor 'n' is not used by any step or ensemble output; "
        'it is left out of the config (declare ens.output("n") to return it)']
    with pytest.warns(UserWarning, match="tensor 'n' is not used"):
        registered = models.register(ens)
    # Triton refuses a tensor nothing reads; the written config leaves the mapping out.
    assert dict(registered.config.ensemble_scheduling.step[0].output_map) == {"twice": "t"}
    assert registered.infer({"x": np.ones((1, 2), "float32")})["y"].tolist() == [[3, 3]]
    # A step none of whose outputs is used is a problem, not a warning: it would run for nothing.
    ens.step("double", {"x": "x"}, {"output_0": "dd"})
    assert "step 'double' writes nothing that is used: no step input or ensemble output reads 'dd'" in _fix(ens, models)


def test_nested_ensembles_and_circles(models):
    models.register(chain("inner", max_batch_size=8))
    outer = Ensemble("outer", max_batch_size=8).input("x", "FP32", [2])
    outer.step("inner", {"x": "x"}, {"y": "y1"}).step("inner", {"x": "y1"}, {"y": "y2"}).output("y2")
    out = models.register(outer).infer({"x": np.zeros((1, 2), "float32")})["y2"]
    assert out.tolist() == [[3.0, 3.0]]  # (0 * 2 + 1) * 2 + 1
    circle = Ensemble("inner", max_batch_size=8).input("x", "FP32", [2]).step("outer", {"x": "x"}, {"y2": "y"}).output("y")
    assert "runs ensemble 'outer', which runs this ensemble" in _fix(circle, models)


# ----------------------------------------------------------------------------- edge_problem
def test_edge_problem(models):
    ens = Ensemble("e", max_batch_size=8).input("x", "FP32", [2]).input("w", "FP64", [2])
    ens.step("double", {"x": "x"}, {"output_0": "d"}).step("inc").step("add", {"a": "d"}, {"output_0": "y"})
    ens.output("y")
    assert ens.edge_problem(None, "x", "inc", "x", models) is None
    assert ens.edge_problem("double", "output_0", 1, "x", models) is None
    assert ens.edge_problem("inc", "output_0", None, "z", models) is None
    problem = ens.edge_problem(None, "w", "inc", "x", models)
    assert "ensemble input 'w' is FP64 [-1, 2] but step 'inc' input 'x' takes FP32 [-1, 2]" in problem
    assert "Fix: make both FP64 or both FP32" in problem
    assert "input 'x' of step 'double' is already connected to tensor 'x'" in ens.edge_problem(
        "inc", "output_0", "double", "x", models)
    assert "step 'add' cannot read its own output" in ens.edge_problem("add", "output_0", "add", "b", models)
    assert "ensemble output 'y' is already written by step 'add'" in ens.edge_problem(
        "double", "output_0", None, "y", models)
    assert "model 'double' has no output 'out'" in ens.edge_problem("double", "out", 1, "x", models)
    assert "did you mean 'output_0'" in ens.edge_problem("double", "outptu_0", None, "q", models)
    assert "model 'inc' has no input 'q'" in ens.edge_problem("double", "output_0", "inc", "q", models)
    assert "there is no ensemble input 'nope'" in ens.edge_problem(None, "nope", "inc", "x", models)
    assert "no step runs this model" in ens.edge_problem("ghost", "y", "inc", "x", models)
    assert "'x' is an ensemble input; a step cannot write it" in ens.edge_problem("inc", "output_0", None, "x", models)

    loop = Ensemble("loop", max_batch_size=8).input("x", "FP32", [2]).step("double", {}, {"output_0": "d"})
    loop.step("add", {"a": "d", "b": "x"}, {"output_0": "y"}).step("inc", {"x": "y"}, {"output_0": "z"}).output("z")
    assert ("connecting step 'inc' to step 'double' would make a cycle: step 'double' already feeds step 'inc'"
            in loop.edge_problem("inc", "output_0", "double", "x", models))
    assert loop.edge_problem(None, "x", "double", "x", models) is None

    unregistered = Ensemble("u").input("x", "FP32", [2]).step("ghost", {"x": "x"})
    assert "step 'ghost' runs model 'ghost', which is not registered" in unregistered.edge_problem(
        None, "x", "ghost", "x", models)
    wide = Ensemble("w", max_batch_size=8).input("x", "FP32", [2]).step("fixed")
    assert "one of them batches" in wide.edge_problem(None, "x", 0, "x", models)


# ----------------------------------------------------------------------------- registering and running
def test_register_and_run_directly(models, clean_default_registry):
    registered = models.register(chain(max_batch_size=8))
    assert registered.framework == "ensemble" and registered.version == 1
    assert "<RegisteredModel 'chain' v1 (ensemble) (x:FP32[2]) -> (y:FP32[2])" in repr(registered)
    assert registered.infer({"x": np.ones((2, 2), "float32")})["y"].tolist() == [[3, 3], [3, 3]]
    assert models.register(chain(max_batch_size=8)).version == 2
    assert models.register(chain(max_batch_size=8), name="other").config.name == "other"
    with pytest.raises(ConfigError, match="unknown option example for an ensemble"):
        models.register(chain(max_batch_size=8), example=np.ones(2))
    with pytest.raises(ConfigError, match="not registered"):
        nbserve.register(chain())  # the default registry has no steps


def test_direct_runner_names_the_failing_step(models):
    def fragile(x):
        if (x < 0).any():
            raise ValueError("bad row")
        return x

    models.register(fragile, example=np.ones((1, 2), "float32"))
    ens = Ensemble("e", max_batch_size=8).input("x", "FP32", [2])
    ens.step("double", {"x": "x"}, {"output_0": "d"}).step("fragile", {"x": "d"}, {"output_0": "y"}).output("y")
    registered = models.register(ens)
    with pytest.raises(InferenceError, match=r"model 'e': step 'fragile' failed: .*model 'fragile' v1.*bad row"):
        registered.infer({"x": -np.ones((1, 2), "float32")})
    models.remove("fragile")
    with pytest.raises(ModelNotReady, match="step 'fragile' failed"):
        registered.infer({"x": np.ones((1, 2), "float32")})


def test_an_optional_input_left_out_is_named(models):
    ens = Ensemble("e", max_batch_size=8).input("x", "FP32", [2]).input("bias", "FP32", [2], optional=True)
    registered = models.register(ens.step("add", {"a": "x", "b": "bias"}, {"output_0": "y"}).output("y"))
    assert registered.config.input[1].optional
    assert registered.infer({"x": X2, "bias": X2})["y"].tolist() == [[2, 2]]
    with pytest.raises(InvalidInput, match=r"step 'add' failed: tensor 'bias' of model 'e': the request left out this "
                                           r"optional input, which step 'add' reads. Fix: send 'bias'"):
        registered.infer({"x": X2})


def test_plan(models):
    ens = Ensemble("diamond", max_batch_size=8).input("x", "FP32", [2])
    ens.step("double", {"x": "x"}, {"output_0": "d"}).step("inc", {"x": "x"}, {"output_0": "i"})
    ens.step("add", {"a": "d", "b": "i"}, {"output_0": "y"}).output("y")
    compiled = plan(ens.to_config(models))
    assert compiled.first == (0, 1) and compiled.order == (0, 1, 2)
    assert [s.waits_for for s in compiled.steps] == [0, 0, 2]
    assert [s.dependents for s in compiled.steps] == [(2,), (2,), ()]


def test_readability_in_code_matches_the_steps_by_hand(registry):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    readability = load_readability()
    readability.register_models(registry)
    ensemble = readability.build_ensemble()
    assert ensemble.check(registry) == []
    registered = registry.register(ensemble)
    text, weight = texts(9), np.linspace(0, 1, 9, dtype=np.float32)[:, None]
    got = registered.infer({"text": text, "weight": weight})["score"]
    np.testing.assert_allclose(got, readability.by_hand(registry, text, weight), rtol=1e-6)
    assert got.shape == (9, 1) and np.unique(got).size > 1


# ----------------------------------------------------------------------------- repositories
def test_written_as_a_triton_ensemble_and_read_back(models, tmp_path):
    ens = chain(max_batch_size=8)
    ens.step("add", {"a": "d", "b": "y"}, {"output_0": "z"}, version=1).output("z")
    registered = models.register(ens)
    repo = write_repository(tmp_path / "repo", list(models))
    config = parse((repo / "chain" / "config.pbtxt").read_text())
    assert config == registered.config
    assert config.platform == "ensemble" and [s.model_version for s in config.ensemble_scheduling.step] == [-1, -1, 1]
    assert list((repo / "chain" / "1").iterdir()) == []
    back = read_repository(repo)
    assert back.get("chain").framework == "ensemble"
    x = np.arange(4, dtype="float32").reshape(2, 2)
    for name in ("y", "z"):
        np.testing.assert_array_equal(back.get("chain").infer({"x": x})[name], registered.infer({"x": x})[name])
    assert Ensemble.from_config(config).to_config(back) == config


@pytest.mark.triton
@pytest.mark.slow
def test_written_readability_runs_in_real_tritonserver(registry, tmp_path):
    reason = _tritonserver.unavailable_reason()
    if reason is not None:
        pytest.skip(f"real tritonserver unavailable: {reason}")
    pytest.importorskip("sklearn")
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    readability = load_readability()
    readability.register_models(registry, python_only=True)
    registry.register(readability.build_ensemble())
    # Unused outputs are left out of the config, which Triton would otherwise refuse to load.
    tokens = Ensemble("tokens", max_batch_size=64).input("text", "BYTES", [1])
    tokens.step("preprocess", {"text": "text"}, {"input_ids": "ids", "attention_mask": "mask", "features": "f"})
    with pytest.warns(UserWarning, match="tensor '(mask|f)' is not used"):
        registry.register(tokens.output("ids"))
    repo = write_repository(tmp_path / "repo", list(registry))
    text, weight = texts(5), np.full((5, 1), 0.25, np.float32)
    expected = readability.by_hand(registry, text, weight)
    with _tritonserver.TritonServer(repo) as server:
        client = httpclient.InferenceServerClient(url=server.http_address)
        assert client.get_model_metadata("readability")["platform"] == "ensemble"
        inputs = [httpclient.InferInput("text", [5, 1], "BYTES"), httpclient.InferInput("weight", [5, 1], "FP32")]
        inputs[0].set_data_from_numpy(text)
        inputs[1].set_data_from_numpy(weight)
        np.testing.assert_allclose(client.infer("readability", inputs).as_numpy("score"), expected, rtol=1e-5)
        grpc = grpcclient.InferenceServerClient(url=server.grpc_address)
        inputs = [grpcclient.InferInput("text", [5, 1], "BYTES"), grpcclient.InferInput("weight", [5, 1], "FP32")]
        inputs[0].set_data_from_numpy(text)
        inputs[1].set_data_from_numpy(weight)
        np.testing.assert_allclose(grpc.infer("readability", inputs).as_numpy("score"), expected, rtol=1e-5)
        ids = grpc.infer("tokens", inputs[:1]).as_numpy("ids")
        np.testing.assert_array_equal(ids, readability.preprocess(text)["input_ids"])
