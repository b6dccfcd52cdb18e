"""The model config: Triton's own proto, friendly builders, validation, config.pbtxt round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbserve._proto import model_config_pb2
from nbserve.config import (
    ModelConfig,
    build_config,
    config_from,
    input_specs,
    output_specs,
    parse,
    render,
    validate,
    validate_name,
)
from nbserve.errors import ConfigError
from nbserve.tensors import DTYPES, TensorSpec

mc = model_config_pb2()

X = TensorSpec("x", [4], "FP32")
Y = TensorSpec("y", [3], "FP32")


def build(**kwargs) -> ModelConfig:
    kwargs.setdefault("name", "m")
    kwargs.setdefault("inputs", [X])
    kwargs.setdefault("outputs", [Y])
    return build_config(**kwargs)


def assert_fix(info: pytest.ExceptionInfo, *fragments: str) -> str:
    """The error says how to fix it, and mentions each fragment."""
    message = str(info.value)
    assert "Fix: " in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- builders
def test_config_is_tritons_message():
    assert ModelConfig is mc.ModelConfig
    assert isinstance(build(), mc.ModelConfig)


def test_builders_from_the_design():
    cfg = build(
        name="iris",
        max_batch_size=64,
        dynamic_batching={"max_queue_delay_microseconds": 100, "preferred_batch_size": [16, 32]},
        instances=2,
    )
    assert cfg.name == "iris"
    assert cfg.max_batch_size == 64
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert list(cfg.dynamic_batching.preferred_batch_size) == [16, 32]
    assert len(cfg.instance_group) == 1
    assert cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert [(t.name, list(t.dims), t.data_type) for t in cfg.input] == [("x", [4], mc.TYPE_FP32)]
    assert input_specs(cfg) == [X] and output_specs(cfg) == [Y]
    text = render(cfg)
    assert "max_queue_delay_microseconds: 100" in text
    assert "preferred_batch_size: 16" in text and "count: 2" in text


def test_tensor_spellings():
    cfg = build(inputs=[("a", [2], "float32"), {"name": "b", "dims": [-1], "dtype": "TYPE_STRING"}, "c"],
                outputs=[TensorSpec("y", [1], "INT64")])
    assert [(s.name, s.dims, s.dtype) for s in input_specs(cfg)] == [
        ("a", (2,), "FP32"),
        ("b", (-1,), "BYTES"),
        ("c", (-1,), "FP32"),
    ]
    assert cfg.input[1].data_type == mc.TYPE_STRING
    optional = build(inputs=[TensorSpec("x", [4], "FP32", optional=True)])
    assert optional.input[0].optional and input_specs(optional)[0].optional


def test_priority_levels_and_queue_policies():
    policy = {"timeout_action": "DELAY", "default_timeout_microseconds": 5000,
              "allow_timeout_override": True, "max_queue_size": 16}
    cfg = build(
        max_batch_size=8,
        dynamic_batching={
            "priority_levels": 3,
            "default_priority_level": 2,
            "default_queue_policy": policy,
            "priority_queue_policy": {1: {"timeout_action": "REJECT", "max_queue_size": 4}},
            "preserve_ordering": True,
        },
    )
    db = cfg.dynamic_batching
    assert (db.priority_levels, db.default_priority_level, db.preserve_ordering) == (3, 2, True)
    q = db.default_queue_policy
    assert q.timeout_action == mc.ModelQueuePolicy.DELAY
    assert (q.default_timeout_microseconds, q.allow_timeout_override, q.max_queue_size) == (5000, True, 16)
    assert db.priority_queue_policy[1].timeout_action == mc.ModelQueuePolicy.REJECT
    assert db.priority_queue_policy[1].max_queue_size == 4
    assert parse(render(cfg)) == cfg


def test_dynamic_batching_forms():
    assert build(max_batch_size=4, dynamic_batching=True).HasField("dynamic_batching")
    assert not build(max_batch_size=4, dynamic_batching=False).HasField("dynamic_batching")
    proto = mc.ModelDynamicBatching(max_queue_delay_microseconds=7)
    assert build(max_batch_size=4, dynamic_batching=proto).dynamic_batching == proto
    camel = build(max_batch_size=4, dynamic_batching={"maxQueueDelayMicroseconds": 9})  # JSON names work too
    assert camel.dynamic_batching.max_queue_delay_microseconds == 9


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("latest", mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1))),
        ("all", mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())),
        (3, mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=3))),
        ([1, 3], mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[1, 3]))),
        ({"latest": {"num_versions": 2}}, mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=2))),
        ({"specific": {"versions": [2]}}, mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[2]))),
    ],
    ids=str,
)
def test_version_policy_forms(policy, expected):
    assert build(version_policy=policy).version_policy == expected


def test_parameters_are_strings():
    cfg = build(parameters={"threads": 4, "mode": "fast", "flag": True})
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {"threads": "4", "mode": "fast", "flag": "True"}


def test_instances_as_groups_and_gpu():
    cfg = build(instances=[{"count": 2, "kind": "KIND_GPU", "gpus": [0]}, {"count": 1, "kind": "KIND_CPU"}])
    assert [(g.count, g.kind) for g in cfg.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_GPU),
        (1, mc.ModelInstanceGroup.KIND_CPU),
    ]
    assert build(instances=1, instance_kind="gpu").instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_base_config_is_refined_not_replaced():
    base = 'name: "ignored" max_batch_size: 16 dynamic_batching { max_queue_delay_microseconds: 50 }'
    cfg = build(name="m", config=base, instances=3)
    assert cfg.name == "m" and cfg.max_batch_size == 16
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 50
    assert cfg.instance_group[0].count == 3
    assert config_from({"name": "m", "max_batch_size": 2}).max_batch_size == 2
    assert config_from(cfg) is cfg


def test_config_from_json_dict_and_bad_type():
    with pytest.raises(ConfigError) as info:
        config_from(42)
    assert_fix(info, "config.pbtxt")


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["a/b", "a\\b", "..", ".", ".hidden", "", " padded ", "a:b", "x\x00y", "../escape"])
def test_names_that_cannot_be_directories(name):
    with pytest.raises(ConfigError) as info:
        validate_name(name)
    assert_fix(info, "name=")
    with pytest.raises(ConfigError):
        build(name=name)


@pytest.mark.parametrize("name", ["iris", "model-1", "v2.onnx", "_private", "Ünïcode"])
def test_names_that_are_fine(name):
    assert build(name=name).name == name


BAD_CONFIGS = {
    "zero dim": (dict(inputs=[("x", [0], "FP32")]), ["use -1"]),
    "negative dim": (dict(outputs=[("y", [-3], "FP32")]), ["use -1"]),
    "bad dtype": (dict(inputs=[("x", [4], "FP128")]), ["FP128", '"FP32"']),
    "duplicate input": (dict(inputs=[X, X]), ["input 'x' is declared twice", "distinct name"]),
    "duplicate output": (dict(outputs=[Y, TensorSpec("y", [1], "INT32")]), ["output 'y' is declared twice"]),
    "no outputs": (dict(outputs=[]), ["at least one output", "outputs=[...]"]),
    "dynamic and sequence": (
        dict(max_batch_size=8, dynamic_batching=True, sequence_batching={}),
        ["dynamic_batching and sequence_batching", "stateful"],
    ),
    "preferred above max": (
        dict(max_batch_size=8, dynamic_batching={"preferred_batch_size": [4, 16]}),
        ["preferred_batch_size", "1..8", "got 16", "max_batch_size"],
    ),
    "preferred zero": (dict(max_batch_size=8, dynamic_batching={"preferred_batch_size": [0]}), ["1..8"]),
    "dynamic without batching": (
        dict(max_batch_size=0, dynamic_batching=True),
        ["dynamic_batching needs max_batch_size > 0", "max_batch_size=64"],
    ),
    "negative max_batch_size": (dict(max_batch_size=-1), ["max_batch_size", "max_batch_size=0"]),
    "max_batch_size not an int": (dict(max_batch_size=2.5), ["max_batch_size"]),
    "default priority above levels": (
        dict(max_batch_size=8, dynamic_batching={"priority_levels": 2, "default_priority_level": 3}),
        ["default_priority_level", "1..2", "got 3"],
    ),
    "default priority zero": (
        dict(max_batch_size=8, dynamic_batching={"priority_levels": 2}),
        ["default_priority_level", "1..2"],
    ),
    "priority without levels": (
        dict(max_batch_size=8, dynamic_batching={"default_priority_level": 1}),
        ["need priority_levels", "priority_levels"],
    ),
    "queue policy for a missing level": (
        dict(max_batch_size=8, dynamic_batching={"priority_levels": 2, "default_priority_level": 1,
                                                  "priority_queue_policy": {5: {"max_queue_size": 1}}}),
        ["priority_queue_policy", "got 5"],
    ),
    "unknown dynamic_batching field": (
        dict(max_batch_size=8, dynamic_batching={"max_queue_delay": 100}),
        ["max_queue_delay", "maxQueueDelayMicroseconds"],
    ),
    "bad timeout_action": (
        dict(max_batch_size=8, dynamic_batching={"default_queue_policy": {"timeout_action": "RETRY"}}),
        ["RETRY"],
    ),
    "dynamic_batching of a wrong type": (dict(max_batch_size=8, dynamic_batching=100), ["dynamic_batching"]),
    "zero instances": (dict(instances=0), ["instances=1"]),
    "unknown instance kind": (dict(instances=1, instance_kind="tpu"), ['instance_kind="gpu"']),
    "unknown version policy": (dict(version_policy="newest"), ["newest", 'version_policy="all"']),
    "version policy latest 0": (dict(version_policy=0), ["num_versions", "version_policy=1"]),
    "version policy version 0": (dict(version_policy=[0, 1]), ["versions >= 1"]),
    "empty specific versions": (dict(version_policy=[]), ["versions >= 1"]),
    "unreadable tensor spec": (dict(inputs=[42]), ["cannot read input spec 42", "TensorSpec("]),
    "ensemble without steps": (dict(platform="ensemble"), ["ensemble_scheduling", "nbserve.Ensemble"]),
    "bad base config text": (dict(config="max_batch_size: many"), ["config.pbtxt", "model_config.proto"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_rejects_what_triton_rejects(case):
    kwargs, fragments = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as info:
        build(**kwargs)
    assert_fix(info, *fragments)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('name: "m" output { name: "y" dims: [1] }', ["has no data_type", "TensorSpec(\"y\""]),
        ('name: "m" output { name: "y" data_type: TYPE_FP32 }', ["empty dims", "dims: [1]"]),
        ('name: "m" output { data_type: TYPE_FP32 dims: [1] }', ["has no name"]),
        ('name: "m" max_batch_size: -2 output { name: "y" data_type: TYPE_FP32 dims: [1] }', ["max_batch_size"]),
        ('name: "m" output { name: "y" data_type: TYPE_FP32 dims: [1] } instance_group { count: -1 }', ["count"]),
        ('name: "m" output { name: "y" data_type: TYPE_FP32 dims: [1] } '
         'version_policy { latest { num_versions: 0 } }', ["num_versions"]),
    ],
)
def test_validate_parsed_configs(text, fragments):
    with pytest.raises(ConfigError) as info:
        validate(parse(text))
    assert_fix(info, *fragments)


def test_parse_errors_name_the_file():
    with pytest.raises(ConfigError) as info:
        parse('name: "m"\nmax_batch_sizee: 4\n', path="/repo/m/config.pbtxt")
    message = assert_fix(info, "/repo/m/config.pbtxt", "max_batch_sizee")
    assert "2:" in message  # the line


# ----------------------------------------------------------------------------- round trip
NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,15}", fullmatch=True)
DIMS = st.lists(st.sampled_from([-1, 1, 2, 3, 7, 16, 1024]), min_size=1, max_size=3)


@st.composite
def tensor_specs(draw, min_size):
    names = draw(st.lists(NAMES, min_size=min_size, max_size=3, unique=True))
    return [
        TensorSpec(name, draw(DIMS), draw(st.sampled_from(list(DTYPES))), optional=draw(st.booleans()))
        for name in names
    ]


@st.composite
def queue_policies(draw):
    return {
        "timeout_action": draw(st.sampled_from(["REJECT", "DELAY"])),
        "default_timeout_microseconds": draw(st.integers(0, 10**9)),
        "allow_timeout_override": draw(st.booleans()),
        "max_queue_size": draw(st.integers(0, 10**4)),
    }


@st.composite
def valid_configs(draw):
    kwargs = {
        "name": draw(NAMES),
        "inputs": draw(tensor_specs(min_size=0)),
        "outputs": [TensorSpec(s.name, s.dims, s.dtype) for s in draw(tensor_specs(min_size=1))],
        "max_batch_size": draw(st.integers(0, 256)),
        "instances": draw(st.integers(1, 4)),
        "instance_kind": draw(st.sampled_from(["cpu", "gpu", "KIND_CPU"])),
        "parameters": draw(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3)),
    }
    mbs = kwargs["max_batch_size"]
    scheduler = draw(st.sampled_from(["none", "dynamic", "sequence"] if mbs else ["none", "sequence"]))
    if scheduler == "dynamic":
        levels = draw(st.integers(0, 4))
        db = {
            "max_queue_delay_microseconds": draw(st.integers(0, 10**6)),
            "preferred_batch_size": draw(st.lists(st.integers(1, mbs), max_size=3, unique=True)),
            "preserve_ordering": draw(st.booleans()),
        }
        if draw(st.booleans()):
            db["default_queue_policy"] = draw(queue_policies())
        if levels:
            db["priority_levels"] = levels
            db["default_priority_level"] = draw(st.integers(1, levels))
            db["priority_queue_policy"] = draw(
                st.dictionaries(st.integers(1, levels), queue_policies(), max_size=levels)
            )
        kwargs["dynamic_batching"] = db
    elif scheduler == "sequence":
        kwargs["sequence_batching"] = {"max_sequence_idle_microseconds": draw(st.integers(0, 10**8))}
    kwargs["version_policy"] = draw(
        st.one_of(
            st.none(),
            st.sampled_from(["latest", "all"]),
            st.integers(1, 5),
            st.lists(st.integers(1, 100), min_size=1, max_size=4, unique=True),
        )
    )
    return kwargs


@settings(max_examples=300, deadline=None)
@given(valid_configs())
def test_valid_configs_round_trip_through_pbtxt(kwargs):
    cfg = build_config(**kwargs)
    text = render(cfg)
    again = parse(text)
    assert again == cfg
    assert validate(again) is again
    assert render(again) == text
    assert input_specs(again) == kwargs["inputs"]
    assert output_specs(again) == kwargs["outputs"]
