"""The registry: versions, lookup, removal, change events, tables, and registrations it refuses."""

from __future__ import annotations

import numpy as np
import pytest

import nbserve
from nbserve.errors import ConfigError, InferenceError, InvalidInput, ModelNotFound, NbserveError, SignatureError
from nbserve.registry import RegisteredModel, Registry, RegistryEvent
from nbserve.tensors import TensorSpec

X = np.ones((2, 3), "float32")


def double(x):
    return x * 2


def adder(offset):
    def add(x):
        return x + offset

    return add


# ----------------------------------------------------------------------------- versions
def test_register_infers_signature_and_config(registry):
    model = registry.register(double, example=X)
    assert isinstance(model, RegisteredModel)
    assert model.name == "double"  # the function's name
    assert model.version == 1
    assert model.framework == "python"
    assert model.inputs == [TensorSpec("x", [3], "FP32")]
    assert model.outputs == [TensorSpec("output_0", [3], "FP32")]
    assert model.config.max_batch_size == 64
    assert model.config.HasField("dynamic_batching")  # serving from a notebook means batching
    assert model.config.backend == "python"
    assert 'name: "double"' in model.pbtxt
    assert model.infer({"x": X})["output_0"].tolist() == (X * 2).tolist()


def test_reregistering_adds_a_version(registry):
    registry.register(lambda x: x + 1, name="m", example=X)
    model = registry.register(lambda x: x + 2, name="m", example=X)
    assert sorted(model.versions) == [1, 2]
    assert model.version == 2
    assert model.infer({"x": X})["output_0"][0, 0] == 3
    assert model.infer({"x": X}, version=1)["output_0"][0, 0] == 2
    assert model.get_version(2) is model.latest
    assert model.get_version("1").version == 1  # versions arrive as strings from URLs


def test_explicit_version_replaces_and_closes_the_old_one(registry):
    registry.register(lambda x: x + 1, name="m", example=X)
    old = registry.register(lambda x: x + 2, name="m", example=X).latest
    closed = []
    old.close = lambda: closed.append(old.version)
    model = registry.register(lambda x: x + 10, name="m", example=X, version=2)
    assert sorted(model.versions) == [1, 2]
    assert model.infer({"x": X})["output_0"][0, 0] == 11
    assert closed == [2]
    assert registry.register(lambda x: x, name="m", example=X, version=7).version == 7


def test_unknown_version(registry):
    model = registry.register(double, example=X)
    with pytest.raises(ModelNotFound) as info:
        model.get_version(5)
    assert "Fix: leave the version out for the latest" in str(info.value)
    assert "[1]" in str(info.value)


# ----------------------------------------------------------------------------- lookup and removal
def test_get_with_close_match_hint(registry):
    registry.register(double, name="resnet50", example=X)
    assert registry.get("resnet50").name == "resnet50"
    with pytest.raises(ModelNotFound) as info:
        registry.get("resnet5")
    message = str(info.value)
    assert "model 'resnet5'" in message and "did you mean 'resnet50'?" in message
    assert info.value.status_code == 404
    with pytest.raises(ModelNotFound, match=r"Fix: register it with nbserve.register"):
        Registry().get("anything")


def test_remove_versions_and_models(registry):
    for offset in (1, 2, 3):
        registry.register(adder(offset), name="m", example=X)
    registry.register(double, example=X)
    registry.remove("m", 2)
    assert sorted(registry.get("m").versions) == [1, 3]
    registry.remove("m", 1)
    registry.remove("m", 3)
    assert "m" not in registry  # its last version went
    assert registry.names() == ["double"] and len(registry) == 1
    registry.remove("double")
    assert len(registry) == 0
    with pytest.raises(ModelNotFound):
        registry.remove("double")


def test_remove_closes_runners(registry):
    entry = registry.register(double, example=X).latest
    closed = []
    entry.close = lambda: closed.append(True)
    registry.remove("double")
    assert closed == [True]


def test_change_events_reach_subscribers(registry):
    events: list[RegistryEvent] = []
    unsubscribe = registry.subscribe(events.append)
    registry.register(double, example=X)
    registry.register(double, example=X)
    registry.remove("double", 1)
    registry.remove("double")
    unsubscribe()
    registry.register(double, example=X)
    assert events == [
        RegistryEvent("registered", "double", 1),
        RegistryEvent("registered", "double", 2),
        RegistryEvent("removed", "double", 1),
        RegistryEvent("removed", "double", None),
    ]
    unsubscribe()  # twice is harmless


# ----------------------------------------------------------------------------- display
def test_models_table_text_and_html(clean_default_registry):
    assert repr(nbserve.models()) == "(no models registered)"
    nbserve.register(double, example=X)
    nbserve.register(double, example=X, max_batch_size=32,
                     dynamic_batching={"max_queue_delay_microseconds": 100, "preferred_batch_size": [8, 16]},
                     instances=2)
    nbserve.register(lambda text: text, name="echo", example=np.array([[b"a"]], dtype=object),
                     max_batch_size=0)
    table = nbserve.models()
    text = repr(table)
    lines = text.splitlines()
    assert lines[0].split() == ["name", "versions", "framework", "inputs", "outputs", "batching", "instances"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:4] == ["double", "1,", "2", "python"]
    assert "max 32, dynamic (100 us, preferred [8, 16])" in lines[2]
    assert lines[3].startswith("echo") and "text BYTES [1, 1]" in lines[3] and " none " in lines[3]
    html = table._repr_html_()
    assert html.startswith("<table class='nbserve-models'>")
    assert html.count("<tr>") == 3 and "<th>batching</th>" in html
    assert "<td>double</td>" in html
    assert nbserve.get("echo").name == "echo"
    nbserve.remove("echo")
    assert [m.name for m in nbserve.models()] == ["double"]


def test_html_escapes_names(registry):
    registry.register(double, name="R&D", example=X)
    html = registry.models()._repr_html_()
    assert "<td>R&amp;D</td>" in html


def test_registered_model_repr(registry):
    model = registry.register(lambda x, y: {"s": x + y}, name="adder", example={"x": X, "y": X})
    assert repr(model) == (
        "<RegisteredModel 'adder' v1 (python) (x:FP32[3], y:FP32[3]) -> (s:FP32[3]) max_batch_size=64>"
    )
    html = model._repr_html_()
    assert "<td>adder</td>" in html and "<pre>name: &quot;adder&quot;" in html


# ----------------------------------------------------------------------------- direct inference
def test_infer_checks_inputs_with_fixes(registry):
    model = registry.register(double, example=X, max_batch_size=4)
    with pytest.raises(InvalidInput) as info:
        model.infer({"x": X.astype("float64")})
    assert 'x.astype("float32")' in str(info.value)
    with pytest.raises(InvalidInput, match="missing input 'x'.*Fix: add 'x'"):
        model.infer({})
    with pytest.raises(InvalidInput, match="unexpected input 'z'"):
        model.infer({"x": X, "z": X})
    with pytest.raises(InvalidInput, match=r"wrong shape.*x\[None\]"):
        model.infer({"x": X[0]})
    with pytest.raises(InvalidInput, match="larger than the model's max_batch_size"):
        model.infer({"x": np.ones((5, 3), "float32")})
    assert model.infer({"x": [[1, 2, 3]]})["output_0"].tolist() == [[2, 4, 6]]  # lists take the declared dtype


def test_model_errors_become_inference_errors(registry):
    def flaky(x):
        if x.shape[0] > 2:
            raise RuntimeError("too many rows")
        return x

    model = registry.register(flaky, example=X)
    with pytest.raises(InferenceError, match="RuntimeError: too many rows") as info:
        model.infer({"x": np.ones((3, 3), "float32")})
    assert isinstance(info.value.__cause__, RuntimeError)


# ----------------------------------------------------------------------------- refused registrations
class _Unpicklable:
    pass


BAD = {
    "plain int": (lambda r: r.register(5, name="m"), SignatureError, ["builtins.int", "wrap it in a function"]),
    "dict": (lambda r: r.register({"w": 1}, name="m"), SignatureError, ["builtins.dict", "wrap it in a function"]),
    "declared inputs differ from the example": (
        lambda r: r.register(double, inputs=[TensorSpec("y", [3], "FP32")], example={"x": X}),
        SignatureError,
        ["declared inputs do not match", "drop inputs="],
    ),
    "declared dtype differs from the example": (
        lambda r: r.register(double, inputs=[TensorSpec("x", [3], "FP64")], example=X),
        SignatureError,
        ["expected FP32, got FP64", 'TensorSpec("x", [3], "FP32")'],
    ),
    "declared dims differ from the example": (
        lambda r: r.register(double, inputs=[TensorSpec("x", [4], "FP32")], example=X),
        SignatureError,
        ["dims do not match", "exclude the batch dimension"],
    ),
    "declared outputs count differs": (
        lambda r: r.register(lambda x: (x, x), name="m", outputs=["y"], example=X),
        SignatureError,
        ["returned 2 outputs but 1 are declared"],
    ),
    "bad dtype string": (
        lambda r: r.register(double, inputs=[("x", [3], "float33")], example=X),
        ConfigError,
        ["float33", '"FP32"'],
    ),
    "missing example": (lambda r: r.register(double), SignatureError, ["without an example", "example="]),
    "path separator in the name": (
        lambda r: r.register(double, name="team/model", example=X),
        ConfigError,
        ["team/model", "name='team_model'"],
    ),
    "lambda without a name": (lambda r: r.register(lambda x: x, example=X), ConfigError, ["name='my_model'"]),
    "conflicting scheduling options": (
        lambda r: r.register(double, example=X, dynamic_batching=True, sequence_batching={}),
        ConfigError,
        ["dynamic_batching and sequence_batching", "stateless"],
    ),
    "unknown option": (
        lambda r: r.register(double, example=X, max_batchsize=8),
        ConfigError,
        ["unknown option max_batchsize", "max_batch_size", "check the spelling"],
    ),
    "preferred_batch_size above max_batch_size": (
        lambda r: r.register(double, example=X, max_batch_size=8, dynamic_batching={"preferred_batch_size": [16]}),
        ConfigError,
        ["preferred_batch_size", "got 16", "raise max_batch_size"],
    ),
    "function fails on the example": (
        lambda r: r.register(lambda x: x @ np.ones((5, 5)), name="m", example=X),
        SignatureError,
        ["calling the function on the example failed: ValueError", "shapes and dtypes"],
    ),
    "batched function returns one row for all": (
        lambda r: r.register(lambda x: x.sum(keepdims=True), name="m", example=X),
        SignatureError,
        ["one row per input row", "batched=False"],
    ),
    "negative max_batch_size": (
        lambda r: r.register(double, example=X, max_batch_size=-1),
        ConfigError,
        ["max_batch_size must be an integer >= 0", "max_batch_size=0"],
    ),
    "max_batch_size as text": (
        lambda r: r.register(double, example=X, max_batch_size="8"),
        ConfigError,
        ["max_batch_size must be an integer >= 0"],
    ),
    "version 0": (
        lambda r: r.register(double, example=X, version=0),
        ConfigError,
        ["version must be an integer >= 1", "version=1"],
    ),
    "dynamic_batching without batching": (
        lambda r: r.register(double, example=X[0], max_batch_size=0, dynamic_batching=True),
        ConfigError,
        ["dynamic_batching needs max_batch_size > 0"],
    ),
    "scalar example for a batching model": (
        lambda r: r.register(double, example=np.float32(1.0)),
        SignatureError,
        ["scalar", "x[None]"],
    ),
    "too few example tensors": (
        lambda r: r.register(lambda x, y: x + y, name="m", example=(X,)),
        SignatureError,
        ["different number of tensors", "as a dict"],
    ),
    "priority level out of range": (
        lambda r: r.register(double, example=X, dynamic_batching={"priority_levels": 2, "default_priority_level": 5}),
        ConfigError,
        ["default_priority_level", "1..2"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_registrations_name_the_fix(registry, case):
    attempt, error, fragments = BAD[case]
    with pytest.raises(error) as info:
        attempt(registry)
    assert isinstance(info.value, NbserveError)
    message = str(info.value)
    assert "Fix: " in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert len(registry) == 0  # nothing half-registered


def test_unknown_framework_lists_the_known_ones(registry):
    with pytest.raises(ConfigError, match="unknown framework 'tensorflow'; expected tensorrt, .*python"):
        registry.register(double, example=X, framework="tensorflow")


def test_failed_reregistration_keeps_the_old_version(registry):
    registry.register(double, example=X)
    with pytest.raises(SignatureError):
        registry.register(lambda x: 1 / 0, name="double", example=X)
    model = registry.get("double")
    assert sorted(model.versions) == [1]
    assert model.infer({"x": X})["output_0"][0, 0] == 2
