"""The model configuration: Triton's own ``ModelConfig`` message, friendly builders, validation.

The config *is* ``tritonclient``'s ``model_config_pb2.ModelConfig``; ``config.pbtxt`` is rendered and
parsed with protobuf's ``text_format``. Users never write protobuf::

    config = build_config(
        name="iris", inputs=[TensorSpec("x", [4], "FP32")], outputs=[TensorSpec("y", [3], "FP32")],
        max_batch_size=64,
        dynamic_batching={"max_queue_delay_microseconds": 100, "preferred_batch_size": [16, 32]},
        instances=2,
    )
    print(render(config))

:func:`validate` rejects everything Triton would reject, with messages that name the field and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format, text_format
from ._proto import model_config_pb2

mc = model_config_pb2()

from .errors import ConfigError
from .tensors import DTYPES, TensorSpec, config_dtype, triton_dtype

ModelConfig = mc.ModelConfig

__all__ = [
    "ModelConfig",
    "build_config",
    "render",
    "parse",
    "validate",
    "validate_name",
    "input_specs",
    "output_specs",
    "to_specs",
    "config_from",
]

# Names become directory names in the repository: refuse anything that could leave it.
_BAD_NAME = re.compile(r"[/\\\x00:*?\"<>|]")

# Options that register(**config) accepts, beyond the signature.
CONFIG_OPTIONS = (
    "max_batch_size",
    "dynamic_batching",
    "sequence_batching",
    "instances",
    "instance_kind",
    "version_policy",
    "parameters",
    "platform",
    "backend",
    "config",
)


def validate_name(name: str, *, what: str = "model name") -> str:
    """A model name must be usable as one directory name inside a repository."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} must be a non-empty string", got=repr(name), hint="pass name='my_model'")
    # A leading dot would make a hidden folder, which repository readers skip.
    if name.startswith(".") or _BAD_NAME.search(name) or name != name.strip():
        raise ConfigError(
            f"{what} {name!r} cannot be a directory name in a model repository",
            expected="letters, digits, '_', '-' or '.' without path separators, not starting with '.'",
            got=repr(name),
            hint=f"use name={re.sub(r'[^A-Za-z0-9_.-]+', '_', name.strip()).strip('.') or 'model'!r}",
        )
    return name


# ----------------------------------------------------------------------------- builders
def _tensor_proto(spec: TensorSpec, cls: type) -> Any:
    message = cls(name=spec.name, data_type=config_dtype(spec.dtype), dims=list(spec.dims))
    if spec.optional and cls is mc.ModelInput:
        message.optional = True
    return message


def to_specs(tensors: Iterable[Any] | None, *, kind: str) -> list[TensorSpec]:
    """Accept TensorSpec, (name, dims, dtype) tuples or dicts; return TensorSpecs."""
    specs = []
    for item in tensors or ():
        if isinstance(item, TensorSpec):
            specs.append(item)
        elif isinstance(item, Mapping):
            specs.append(TensorSpec(**item))
        elif isinstance(item, (tuple, list)) and 1 <= len(item) <= 3:
            specs.append(TensorSpec(*item))
        elif isinstance(item, str):
            specs.append(TensorSpec(item))
        else:
            raise ConfigError(
                f"cannot read {kind} spec {item!r}",
                hint=f'pass TensorSpec("x", [4], "FP32") or ("x", [4], "FP32") in {kind}s=[...]',
            )
    return specs


def _message(value: Any, message: Any, field: str) -> Any:
    """Dict (JSON names or proto names), True, or the proto itself -> proto message."""
    if value is True:
        return message
    if isinstance(value, type(message)):
        return value
    if isinstance(value, Mapping):
        try:
            return json_format.ParseDict(_jsonable(value), message)
        except json_format.ParseError as exc:
            raise ConfigError(
                f"invalid {field}: {exc}",
                hint=f"see the fields of Triton's {type(message).__name__} in model_config.proto",
            ) from None
    raise ConfigError(
        f"{field} must be True, a dict or a {type(message).__name__}",
        got=repr(value),
        hint=f"pass {field}={{...}} with the field names of Triton's {type(message).__name__}",
    )


def _jsonable(value: Any) -> Any:
    # json_format wants string keys for maps (priority_queue_policy is map<uint64, ...>).
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _version_policy(value: Any) -> mc.ModelVersionPolicy:
    if isinstance(value, str):
        policy = value.lower()
        if policy == "latest":
            return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1))
        if policy == "all":
            return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
        raise ConfigError(
            f"unknown version_policy {value!r}",
            expected='"latest", "all", {"latest": {"num_versions": N}} or {"specific": {"versions": [...]}}',
            hint='version_policy="all", version_policy=2 (latest two) or version_policy=[1, 3] (those versions)',
        )
    if isinstance(value, int):
        return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=value))
    if isinstance(value, (list, tuple)):
        return mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=list(value)))
    return _message(value, mc.ModelVersionPolicy(), "version_policy")


def _instance_groups(instances: Any, kind: str | None) -> list[mc.ModelInstanceGroup]:
    kind_name = (kind or "KIND_CPU").upper()
    if not kind_name.startswith("KIND_"):
        kind_name = "KIND_" + kind_name
    if kind_name not in mc.ModelInstanceGroup.Kind.keys():
        raise ConfigError(f"unknown instance_kind {kind!r}", expected="cpu, gpu, model or auto",
                          hint='instance_kind="cpu" or instance_kind="gpu"')
    if isinstance(instances, bool) or instances is None:
        raise ConfigError("instances must be a count or a list of instance groups", got=repr(instances),
                          hint='instances=2, or instances=[{"count": 2, "kind": "KIND_CPU"}]')
    if isinstance(instances, int):
        if instances < 1:
            raise ConfigError("instances must be at least 1", got=instances, hint="instances=1")
        return [mc.ModelInstanceGroup(count=instances, kind=mc.ModelInstanceGroup.Kind.Value(kind_name))]
    return [_message(group, mc.ModelInstanceGroup(), "instance_group") for group in instances]


def build_config(
    *,
    name: str,
    inputs: Iterable[Any] = (),
    outputs: Iterable[Any] = (),
    max_batch_size: int = 0,
    dynamic_batching: Any = None,
    sequence_batching: Any = None,
    instances: Any = None,
    instance_kind: str | None = None,
    version_policy: Any = None,
    parameters: Mapping[str, Any] | None = None,
    platform: str = "",
    backend: str = "",
    config: Any = None,
) -> ModelConfig:
    """Build and validate one model's config from friendly Python values.

    Args:
        name: the model name (a directory name in the repository).
        inputs, outputs: TensorSpecs (or ``(name, dims, dtype)`` tuples); dims exclude the batch.
        max_batch_size: > 0 makes the leading dimension the batch; 0 disables batching.
        dynamic_batching: True, or a dict of Triton's ``dynamic_batching`` fields.
        sequence_batching: a dict of Triton's ``sequence_batching`` fields.
        instances: how many copies run at once (``instance_group.count``), or instance-group dicts.
        instance_kind: "cpu" or "gpu" for ``instances`` given as a count.
        version_policy: "latest", "all", an int (latest N) or a list of versions (specific).
        parameters: string key/values for the backend (``parameters { key: ... }``).
        platform, backend: Triton's backend selection (written by each nbserve backend).
        config: a base ``ModelConfig`` or ``config.pbtxt`` text that the other arguments refine.

    Returns:
        A validated ``model_config_pb2.ModelConfig``.

    Raises:
        ConfigError: for anything Triton would reject, naming the field and the fix.

    >>> cfg = build_config(name="m", inputs=[("x", [4], "FP32")], outputs=[("y", [1], "FP32")],
    ...                    max_batch_size=8, dynamic_batching={"max_queue_delay_microseconds": 100})
    >>> cfg.dynamic_batching.max_queue_delay_microseconds
    100
    """
    base = config_from(config) if config is not None else ModelConfig()
    cfg = ModelConfig()
    cfg.CopyFrom(base)
    cfg.name = validate_name(name)
    if platform:
        cfg.platform = platform
    if backend:
        cfg.backend = backend
    if max_batch_size is not None and (max_batch_size or not base.max_batch_size):
        cfg.max_batch_size = check_max_batch_size(max_batch_size, model=name)
    input_list, output_list = to_specs(inputs, kind="input"), to_specs(outputs, kind="output")
    if input_list:
        del cfg.input[:]
        cfg.input.extend(_tensor_proto(s, mc.ModelInput) for s in input_list)
    if output_list:
        del cfg.output[:]
        cfg.output.extend(_tensor_proto(s, mc.ModelOutput) for s in output_list)
    if dynamic_batching is not None and dynamic_batching is not False and sequence_batching is not None:
        raise ConfigError(
            "a model has one scheduler: dynamic_batching and sequence_batching were both given",
            model=name,
            hint="keep dynamic_batching for stateless models, sequence_batching for stateful ones",
        )
    if dynamic_batching is not None and dynamic_batching is not False:
        cfg.dynamic_batching.CopyFrom(_message(dynamic_batching, mc.ModelDynamicBatching(), "dynamic_batching"))
    if sequence_batching is not None:
        cfg.sequence_batching.CopyFrom(_message(sequence_batching, mc.ModelSequenceBatching(), "sequence_batching"))
    if instances is not None:
        del cfg.instance_group[:]
        cfg.instance_group.extend(_instance_groups(instances, instance_kind))
    if version_policy is not None:
        cfg.version_policy.CopyFrom(_version_policy(version_policy))
    for key, value in (parameters or {}).items():
        cfg.parameters[str(key)].string_value = value if isinstance(value, str) else str(value)
    validate(cfg)
    return cfg


def check_max_batch_size(value: Any, *, model: str | None = None) -> int:
    """``value`` when it is an integer >= 0, else ConfigError naming the fix."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            "max_batch_size must be an integer >= 0",
            model=model,
            got=repr(value),
            hint="max_batch_size=0 turns batching off; 64 is a good start",
        )
    return value


def with_reshapes(
    config: ModelConfig, inputs: Mapping[str, Any] | None = None, outputs: Mapping[str, Any] | None = None
) -> ModelConfig:
    """A copy of ``config`` with ``reshape { shape: ... }`` on the tensors whose model shape differs
    from their dims (Triton needs at least one dim per item: a model's per-item scalar is declared
    ``dims: [1]`` with ``reshape { shape: [] }``)."""
    out = ModelConfig()
    out.CopyFrom(config)
    for tensors, shapes in ((out.input, inputs or {}), (out.output, outputs or {})):
        for tensor in tensors:
            if tensor.name in shapes and not tensor.HasField("reshape"):
                tensor.reshape.SetInParent()  # an empty shape is meaningful: a scalar per item
                tensor.reshape.shape[:] = list(shapes[tensor.name])
    return out


def config_from(value: Any) -> ModelConfig:
    """A ModelConfig from a proto, ``config.pbtxt`` text or a dict in Triton's JSON form."""
    if isinstance(value, ModelConfig):
        return value
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, Mapping):
        return _message(value, ModelConfig(), "config")
    raise ConfigError("config must be a ModelConfig, config.pbtxt text or a dict", got=type(value).__name__,
                      hint='pass config=\'max_batch_size: 8\' (config.pbtxt text) or a dict of its fields')


# ----------------------------------------------------------------------------- text format
def render(config: ModelConfig) -> str:
    """``config.pbtxt`` text, as Triton reads it."""
    return text_format.MessageToString(config)


def parse(text: str, *, path: str | None = None) -> ModelConfig:
    """Parse ``config.pbtxt`` text with Triton's proto; errors name the file and line."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        where = path or "config.pbtxt"
        raise ConfigError(
            f"{where} does not parse as Triton's ModelConfig: {exc}",
            hint="check the field name and value at that line against model_config.proto",
        ) from None
    return config


# ----------------------------------------------------------------------------- accessors
def input_specs(config: ModelConfig) -> list[TensorSpec]:
    return [
        TensorSpec(t.name, list(t.dims), mc.DataType.Name(t.data_type), optional=t.optional)
        for t in config.input
    ]


def output_specs(config: ModelConfig) -> list[TensorSpec]:
    return [TensorSpec(t.name, list(t.dims), mc.DataType.Name(t.data_type)) for t in config.output]


# ----------------------------------------------------------------------------- validation
def validate(config: ModelConfig) -> ModelConfig:
    """Raise ConfigError for anything Triton would reject; return the config otherwise."""
    name = config.name
    validate_name(name)
    if config.max_batch_size < 0:
        raise ConfigError("max_batch_size must be >= 0", model=name, got=config.max_batch_size,
                          hint="max_batch_size: 0 turns batching off")
    is_ensemble = config.platform == "ensemble"
    if is_ensemble != config.HasField("ensemble_scheduling"):
        raise ConfigError(
            'platform "ensemble" and ensemble_scheduling go together',
            model=name,
            got=f"platform={config.platform!r}, ensemble_scheduling "
            + ("set" if config.HasField("ensemble_scheduling") else "missing"),
            hint="build ensembles with nbserve.Ensemble, which writes both",
        )
    if not config.output:
        raise ConfigError("a model needs at least one output", model=name, hint="pass outputs=[...]")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for t in tensors:
            _validate_tensor(config, kind, t)
            if t.name in seen:
                raise ConfigError(
                    f"{kind} '{t.name}' is declared twice",
                    model=name,
                    hint=f"give every {kind} a distinct name",
                )
            seen.add(t.name)
    _validate_dynamic_batching(config)
    for group in config.instance_group:
        if group.count < 0:
            raise ConfigError("instance_group count must be >= 1", model=name, got=group.count,
                              hint="instances=1")
    policy = config.version_policy
    if policy.HasField("specific"):
        if not policy.specific.versions or any(v < 1 for v in policy.specific.versions):
            raise ConfigError(
                "version_policy specific needs versions >= 1",
                model=name,
                got=list(policy.specific.versions),
                hint="list existing version numbers, e.g. version_policy=[1, 2]",
            )
    if policy.HasField("latest") and policy.latest.num_versions < 1:
        raise ConfigError("version_policy latest needs num_versions >= 1", model=name,
                          got=policy.latest.num_versions, hint="version_policy=1 serves the latest version")
    return config


def _validate_tensor(config: ModelConfig, kind: str, t: Any) -> None:
    name = config.name
    if not t.name:
        raise ConfigError(f"an {kind} has no name", model=name, hint="every tensor needs name: ...")
    if t.data_type == mc.TYPE_INVALID:
        raise ConfigError(
            f"{kind} has no data_type",
            model=name,
            tensor=t.name,
            expected="one of " + ", ".join(row.config_name for row in DTYPES.values()),
            hint=f'set data_type, e.g. TensorSpec("{t.name}", dims, "FP32")',
        )
    if not t.dims and not (t.HasField("reshape")):
        raise ConfigError(
            f"{kind} has empty dims",
            model=name,
            tensor=t.name,
            hint="use dims: [1] for one value per batch item (Triton needs at least one dimension)",
        )
    for d in t.dims:
        if d < -1 or d == 0:
            raise ConfigError(
                f"{kind} dims must be positive or -1",
                model=name,
                tensor=t.name,
                got=list(t.dims),
                hint="use -1 for a variable dimension",
            )
    # The batch dimension is implicit when batching: dims exclude it.
    if config.max_batch_size == 0 and config.dynamic_batching.ListFields():
        pass  # reported by _validate_dynamic_batching


def _validate_dynamic_batching(config: ModelConfig) -> None:
    if not config.HasField("dynamic_batching"):
        return
    name, db = config.name, config.dynamic_batching
    if config.max_batch_size == 0:
        raise ConfigError(
            "dynamic_batching needs max_batch_size > 0",
            model=name,
            got="max_batch_size 0",
            hint="set max_batch_size=64 (or drop dynamic_batching)",
        )
    for size in db.preferred_batch_size:
        if size < 1 or size > config.max_batch_size:
            raise ConfigError(
                "preferred_batch_size must lie between 1 and max_batch_size",
                model=name,
                expected=f"1..{config.max_batch_size}",
                got=size,
                hint=f"drop preferred batch sizes above {config.max_batch_size}, or raise max_batch_size to {size}",
            )
    if db.priority_levels == 0 and (db.default_priority_level or db.priority_queue_policy):
        raise ConfigError(
            "default_priority_level and priority_queue_policy need priority_levels",
            model=name,
            hint="set priority_levels to the number of levels",
        )
    if db.priority_levels and not 1 <= db.default_priority_level <= db.priority_levels:
        raise ConfigError(
            "default_priority_level must lie between 1 and priority_levels",
            model=name,
            expected=f"1..{db.priority_levels}",
            got=db.default_priority_level,
            hint="set default_priority_level to a level between 1 and priority_levels (1 is the highest)",
        )
    for level in db.priority_queue_policy:
        if not 1 <= level <= db.priority_levels:
            raise ConfigError(
                "priority_queue_policy names a level that does not exist",
                model=name,
                expected=f"1..{db.priority_levels}",
                got=level,
                hint=f"key priority_queue_policy by levels 1..{db.priority_levels}, or raise priority_levels",
            )


def describe_dtype(data_type: int) -> str:
    """``TYPE_FP32`` -> ``FP32`` for display."""
    return triton_dtype(data_type)
