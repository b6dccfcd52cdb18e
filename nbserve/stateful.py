"""Stateful Python models: a function of (inputs, state) that returns (outputs, new state).

``register_stateful`` registers such a function with Triton's sequence batcher: the config gets a
``sequence_batching`` section with implicit ``state`` (input and output names, dims, ``initial_state``)
and the START/END control inputs, so the server keeps every sequence's state between its requests
and the function stays a plain function of arrays::

    def running_sum(x, total):                       # total: this sequence's state, one row each
        total = total + x
        return {"mean": total / 2, "total": total}   # the new state goes back under its name

    nbserve.register_stateful(running_sum, state=nbserve.StateSpec("total", [4]),
                              example={"x": np.zeros((1, 4), "float32")})
    server.infer("running_sum", {"x": x}, sequence_id=7, sequence_start=True)

Exported (``nbserve.write_repository``), the model is a Triton Python-backend model whose
``model.py`` runs :mod:`nbserve._stateful_runtime`. Triton 2.51's Python backend hands a model its
initial implicit state but never stores the output state, so that ``model.py`` keeps each
sequence's state itself, keyed by the request's correlation id (the config keeps the ``state``
section, so Triton still supplies the initial state, from ``zero_data`` or ``initial_state/`` files).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from . import _stateful_runtime
from ._proto import model_config_pb2
from .config import (
    ModelConfig,
    build_config,
    check_max_batch_size,
    to_specs,
    validate,
    validate_name,
)
from .errors import ConfigError, ExportError, SignatureError
from .registry import ModelVersion, RegisteredModel, Registry, default_registry
from .serving.sequence import DEFAULT_IDLE_MICROSECONDS, validate_sequence_batching
from .tensors import (
    TensorSpec,
    config_dtype,
    numpy_dtype,
    serialize_bytes,
    shape_matches,
    triton_dtype,
)

__all__ = ["MODEL_PY_TEMPLATE", "StateSpec", "reads", "register_stateful", "write"]

name = BACKEND = "stateful"  # ModelVersion.backend: the repository writer picks this module by it
CALLABLE_FILE = "callable.pkl"
SIGNATURE_FILE = "signature.json"
INITIAL_STATE_DIR = "initial_state"  # Triton reads initial_state data_file from <model>/initial_state/


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class StateSpec:
    """One piece of a sequence's state, as Triton's ``sequence_batching.state`` declares it.

    Args:
        name: the function's parameter that receives the state, and the state input's name.
        dims: the state of one sequence (no batch dimension); taken from ``initial`` when omitted.
        dtype: its data type ("FP32", "int64", np.float32, ...).
        initial: the state at a sequence's start: None or 0 for zeros, a scalar, or an array.
        output_name: the output that carries the new state (default: ``name``; clients see it
            when the model exposes its state).

    >>> StateSpec("total", [4]).dims
    (4,)
    >>> StateSpec("count", initial=np.ones(2, "int64")).dtype
    'INT64'
    """

    name: str
    dims: tuple[int, ...]
    dtype: str
    initial: np.ndarray
    output_name: str

    def __init__(self, name: str, dims: Any = None, dtype: Any = None, *, initial: Any = None,
                 output_name: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("a state needs a name (the function parameter it arrives in)", got=repr(name),
                              hint='StateSpec("h", [4])')
        given = initial is not None and np.ndim(initial) > 0
        if dtype is None:
            dtype = triton_dtype(np.asarray(initial)) if given else "FP32"
        dtype = triton_dtype(dtype)
        if dtype == "BF16":
            raise ConfigError("BF16 states are not supported", tensor=name, hint='use dtype="FP16" or "FP32"')
        if dims is None:
            if not given:
                raise ConfigError("a state needs dims (or an initial array to take them from)", tensor=name,
                                  hint=f'StateSpec("{name}", [4]) or StateSpec("{name}", initial=np.zeros(4))')
            dims = np.shape(initial)
        spec = TensorSpec(name, dims, dtype)  # validates dims and dtype
        numpy_type = np.dtype(object) if dtype == "BYTES" else numpy_dtype(dtype)
        if given:
            value = np.asarray(initial)
            if dtype == "BYTES":
                value = np.asarray([v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1)],
                                   dtype=object).reshape(value.shape)
            value = value.astype(numpy_type)
            if not shape_matches(spec.dims, value.shape):
                raise ConfigError("the initial state does not fit the state's dims", tensor=name,
                                  expected=list(spec.dims), got=list(value.shape),
                                  hint="give an initial array of the state's shape (one sequence, no batch dimension)")
        else:
            if -1 in spec.dims:
                raise ConfigError("a state with variable dims needs an initial array", tensor=name,
                                  got=list(spec.dims), hint=f'StateSpec("{name}", [-1], initial=np.zeros(3))')
            fill = b"" if dtype == "BYTES" else (initial if initial is not None else 0)
            value = np.full(spec.dims, fill, dtype=numpy_type)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dims", spec.dims)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "initial", value)
        object.__setattr__(self, "output_name", output_name or name)

    @property
    def zero(self) -> bool:
        """True when the initial state is all zeros (Triton's ``zero_data``)."""
        if self.dtype == "BYTES":
            return all(v == b"" for v in self.initial.reshape(-1))
        return not np.any(self.initial)

    @property
    def data_file(self) -> str:
        return f"{self.name}.bin"

    def runtime(self) -> dict[str, Any]:
        """The description :class:`nbserve._stateful_runtime.StatefulRunner` takes."""
        return {"name": self.name, "input_name": self.name, "output_name": self.output_name,
                "dims": list(self.dims), "dtype": self.dtype, "initial": self.initial}

    def __repr__(self) -> str:
        return f"StateSpec({self.name!r}, {list(self.dims)}, {self.dtype!r}, output_name={self.output_name!r})"


def state_specs(state: Any) -> list[StateSpec]:
    """StateSpecs from one spec, a list of them, or a dict ``{name: initial array}``."""
    if isinstance(state, StateSpec):
        return [state]
    if isinstance(state, dict):
        return [StateSpec(str(k), initial=np.asarray(v)) for k, v in state.items()]
    if isinstance(state, (list, tuple)) and state and all(isinstance(s, StateSpec) for s in state):
        return list(state)
    raise ConfigError("state must be a StateSpec, a list of StateSpecs or a dict {name: initial array}",
                      got=type(state).__name__, hint='state=nbserve.StateSpec("h", [4]) or state={"h": np.zeros(4)}')


# ----------------------------------------------------------------------------- registration
def _parameters(fn: Any) -> tuple[list[str], set[str], bool]:
    """(required parameter names, every parameter name, takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return [], set(), False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    return required, {p.name for p in params if p.kind in kinds}, any(p.kind is p.VAR_KEYWORD for p in params)


def _sequence_config(value: Any, model: str) -> Any:
    """Triton's ModelSequenceBatching from a dict of its fields (or the message itself)."""
    message = model_config_pb2().ModelSequenceBatching()
    if value is None:
        return message
    if isinstance(value, type(message)):
        message.CopyFrom(value)
        return message
    if not isinstance(value, dict):
        raise ConfigError("sequence_batching must be a dict of Triton's ModelSequenceBatching fields", model=model,
                          got=type(value).__name__,
                          hint='sequence_batching={"oldest": {"max_queue_delay_microseconds": 1000}}')
    try:
        return json_format.ParseDict(value, message)
    except json_format.ParseError as exc:
        raise ConfigError(f"invalid sequence_batching: {exc}", model=model,
                          hint="see Triton's ModelSequenceBatching in model_config.proto for the field names") from None


def _add_controls(sb: Any, taken: set[str]) -> None:
    """Declare START and END controls unless the config has them: the exported model.py needs both."""
    kinds = {c.control[0].kind for c in sb.control_input if c.control}
    control = model_config_pb2().ModelSequenceBatching.Control
    for kind, base in ((control.CONTROL_SEQUENCE_START, "START"), (control.CONTROL_SEQUENCE_END, "END")):
        if kind in kinds:
            continue
        control_name = base if base not in taken else f"SEQUENCE_{base}"
        taken.add(control_name)
        sb.control_input.add(name=control_name).control.add(kind=kind, int32_false_true=[0, 1])


def _control_descriptions(sb: Any) -> list[dict[str, Any]]:
    out = []
    for control_input in sb.control_input:
        control = control_input.control[0]
        if control.kind == control.CONTROL_SEQUENCE_CORRID:  # the sequence id; 0 outside a sequence
            wire = triton_dtype(control.data_type)
            out.append({"name": control_input.name, "kind": int(control.kind), "dtype": wire,
                        "true": b"" if wire == "BYTES" else 0})
            continue
        for field, dtype in (("int32_false_true", "INT32"), ("fp32_false_true", "FP32"), ("bool_false_true", "BOOL")):
            values = list(getattr(control, field))
            if values:
                out.append({"name": control_input.name, "kind": int(control.kind), "dtype": dtype,
                            "true": values[1]})
    return out


def register_stateful(
    fn: Any,
    name: str | None = None,
    *,
    state: Any,
    example: Any = None,
    inputs: Any = None,
    outputs: Any = None,
    version: int | None = None,
    max_batch_size: int | None = None,
    sequence_batching: Any = None,
    expose_state: bool = True,
    batched: bool = True,
    registry: Registry | None = None,
    **config: Any,
) -> RegisteredModel:
    """Register a function of (inputs, state) -> (outputs, new state) as a stateful model.

    The server runs it with Triton's sequence batcher: clients send ``sequence_id`` with
    ``sequence_start`` on a sequence's first request and ``sequence_end`` on its last, and each call
    gets that sequence's state (its initial state first). The function is called with the model
    inputs and each state by its name (plus any control input it names as a parameter, e.g. START),
    and returns a dict holding the outputs and the new states by name, or a tuple whose last items
    are the new states.

    Args:
        fn: the function (batched: arrays with a leading batch dimension, one row per sequence).
        name: the model name (default: the function's name).
        state: a StateSpec, a list of them, or ``{name: initial array}``.
        example: a batch of the model inputs (no state), to infer the signature.
        inputs, outputs: TensorSpecs or names, when they cannot be inferred.
        version: the version number (default: the next one).
        max_batch_size: rows per batch (default 64); with the ``direct`` strategy also the number of
            sequence slots per instance. 0: the function takes one unbatched request at a time.
        sequence_batching: Triton's ``sequence_batching`` fields, e.g. ``{"oldest":
            {"max_queue_delay_microseconds": 1000}, "max_sequence_idle_microseconds": 5_000_000}``;
            the state and the START/END controls are added.
        expose_state: list each state output among the model's outputs, so clients (and
            :class:`nbserve.SequenceStepper`) can read it.
        batched: False for a function of one item (the runner loops over the rows).
        registry: where to register (default: the notebook's registry).
        **config: ``instances``, ``instance_kind``, ``version_policy``, ``parameters``.

    Returns:
        The RegisteredModel.

    Raises:
        SignatureError: the signature cannot be inferred, or the function's state does not match.
        ConfigError: an option Triton would reject.

    >>> import numpy as np
    >>> reg = Registry()
    >>> def running_sum(x, total):
    ...     total = total + x
    ...     return {"y": total * 2, "total": total}
    >>> model = register_stateful(running_sum, state=StateSpec("total", [2]),
    ...                           example={"x": np.ones((1, 2), "float32")}, registry=reg)
    >>> [t.name for t in model.config.output], model.config.sequence_batching.state[0].input_name
    (['y', 'total'], 'total')
    """
    registry = registry if registry is not None else default_registry
    specs = state_specs(state)
    model = validate_name(name if name is not None else _function_name(fn))
    unknown = sorted(set(config) - {"instances", "instance_kind", "version_policy", "parameters"})
    if unknown:
        raise ConfigError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
            model=model,
            expected="instances, instance_kind, version_policy, parameters (and sequence_batching for the scheduler)",
            hint="a stateful model is scheduled by sequence_batching; dynamic_batching does not apply",
        )
    max_batch_size = 64 if max_batch_size is None else check_max_batch_size(max_batch_size, model=model)
    batch_dim = max_batch_size > 0
    state_names = [s.name for s in specs]
    if len(set(state_names)) != len(state_names):
        raise ConfigError("two states share a name", model=model, got=state_names, hint="give every state its own name")
    required, all_params, var_keyword = _parameters(fn)

    sb = _sequence_config(sequence_batching, model)
    if sb.state:
        raise ConfigError("give the state with state=..., not inside sequence_batching", model=model,
                          hint='state=nbserve.StateSpec("h", [4])')
    declared_inputs = to_specs(inputs, kind="input") if inputs is not None and not _names_only(inputs) else None
    input_names = (list(inputs) if _names_only(inputs) else [s.name for s in declared_inputs] if declared_inputs
                   else list(example) if isinstance(example, dict) else None)
    control_names = {c.name for c in sb.control_input}
    if input_names is None:
        input_names = [p for p in required if p not in state_names and p not in control_names
                       and p not in ("START", "END")]
    clash = sorted(set(input_names) & set(state_names))
    if clash:
        raise ConfigError("a name is both an input and a state", model=model, got=clash,
                          hint="the server fills the state itself: remove it from the inputs and the example")
    _add_controls(sb, set(input_names) | set(state_names))
    controls = [c for c in _control_descriptions(sb) if c["name"] in all_params or var_keyword]

    if example is None:
        if not declared_inputs:
            raise SignatureError(
                "cannot infer the signature of a stateful function without an example",
                model=model,
                hint="pass example={...} (a batch of the model inputs, without the state), or inputs=[TensorSpec(...)]",
            )
        from .backends.base import synthesize_example

        example = synthesize_example(declared_inputs, batched=batch_dim)
    from .backends.base import check_declared, normalize_example, specs_from_arrays

    arrays = normalize_example(example, input_names or ["input_0"])
    extra = sorted(set(arrays) & set(state_names))
    if extra:
        raise SignatureError("the example holds a state", model=model, got=extra,
                             hint="leave states out of the example: the server supplies them")
    input_specs = check_declared(declared_inputs, specs_from_arrays(arrays, batched=batch_dim, kind="input",
                                                                    model=model), kind="input", model=model)
    input_names = [s.name for s in input_specs]
    output_names = list(outputs) if _names_only(outputs) else (
        [s.name for s in to_specs(outputs, kind="output")] if outputs is not None else None)
    runner_options = {"controls": controls, "batched": batched or not batch_dim, "batch_dim": batch_dim}
    probe = _stateful_runtime.StatefulRunner(fn, input_names, [s.runtime() for s in specs], output_names,
                                             **runner_options)
    try:
        result = probe(arrays)
    except Exception as exc:  # the user's function: anything can come out
        raise SignatureError(
            f"calling the function on the example failed: {type(exc).__name__}: {exc}",
            model=model,
            hint="the function gets the inputs and each state by name (one row per sequence) and returns "
            "(outputs..., new states...) or a dict with the outputs and the new states",
        ) from exc
    for spec in specs:
        got = result[spec.output_name]
        item = list(got.shape[1:] if batch_dim else got.shape)
        if triton_dtype(got) != spec.dtype or not shape_matches(spec.dims, item):
            raise SignatureError(
                "the new state does not match the state's spec",
                model=model,
                tensor=spec.output_name,
                expected=f"{spec.dtype} {list(spec.dims)} per sequence",
                got=f"{triton_dtype(got)} {item}",
                hint=f"return the new '{spec.name}' with the dtype and shape of the state it replaces",
            )
    model_outputs = {k: v for k, v in result.items() if k not in {s.output_name for s in specs}}
    output_specs = check_declared(
        to_specs(outputs, kind="output") if outputs is not None and not _names_only(outputs) else None,
        specs_from_arrays(model_outputs, batched=batch_dim, kind="output", model=model), kind="output", model=model,
    )
    runner = _stateful_runtime.StatefulRunner(
        fn, input_names, [s.runtime() for s in specs], [s.name for s in output_specs],
        {s.name: s.dtype for s in output_specs}, **runner_options,
    )
    if expose_state:
        output_specs = output_specs + [TensorSpec(s.output_name, s.dims, s.dtype) for s in specs]

    cfg = build_config(name=model, inputs=input_specs, outputs=output_specs, max_batch_size=max_batch_size,
                       backend="python", instances=config.get("instances", 1),
                       instance_kind=config.get("instance_kind"), version_policy=config.get("version_policy"),
                       parameters=config.get("parameters"))
    cfg.sequence_batching.CopyFrom(sb)
    for spec in specs:
        entry = cfg.sequence_batching.state.add(input_name=spec.name, output_name=spec.output_name,
                                                data_type=config_dtype(spec.dtype), dims=list(spec.dims))
        initial = entry.initial_state.add(data_type=config_dtype(spec.dtype), dims=list(spec.initial.shape),
                                          name=f"{spec.name}_initial")
        if spec.zero:
            initial.zero_data = True
        else:
            initial.data_file = spec.data_file
    validate_sequence_batching(validate(cfg))

    existing = registry.get(model).versions if model in registry else {}
    if version is None:
        version = max(existing) + 1 if existing else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError("version must be an integer >= 1", model=model, got=repr(version),
                          hint="leave version out to add the next version")
    entry = ModelVersion(
        name=model,
        version=version,
        config=cfg,
        runner=runner,
        framework="python",
        backend=BACKEND,
        obj=fn,
        options={"runner": runner, "states": specs, "initial_state": {s.name: s.initial for s in specs}},
    )
    return registry.add(entry)


def _names_only(tensors: Any) -> bool:
    return isinstance(tensors, (list, tuple)) and bool(tensors) and all(isinstance(t, str) for t in tensors)


def _function_name(fn: Any) -> str:
    value = getattr(fn, "__name__", None)
    if isinstance(value, str) and value and value != "<lambda>":
        return value
    raise ConfigError("cannot pick a name for this function", hint="pass name='my_model'")


# ----------------------------------------------------------------------------- files
MODEL_PY_TEMPLATE = '''\
"""Triton Python-backend model written by nbserve for a stateful function (nbserve.register_stateful).

The function is in @CALLABLE_FILE@ (cloudpickle); @SIGNATURE_FILE@ names its inputs, states, outputs and
controls. Triton's sequence batcher hands every request its control inputs and, on a sequence's
first request, the initial implicit state; Triton's Python backend keeps no output state, so this
model keeps each sequence's state itself, keyed by the request's correlation id (SequenceStore).
Served by nbserve instead (requests without a correlation id), the server keeps the state and
hands it in with every request.
"""
import json
import os

import triton_python_backend_utils as pb_utils

# ---- nbserve runtime (nbserve/backends/_python_runtime.py) ----
@PYTHON_RUNTIME@
# ---- nbserve stateful runtime (nbserve/_stateful_runtime.py) ----
@STATEFUL_RUNTIME@
# ---- end of runtime ----


class TritonPythonModel:
    def initialize(self, args):
        import cloudpickle

        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "@CALLABLE_FILE@"), "rb") as f:
            fn = cloudpickle.load(f)
        with open(os.path.join(here, "@SIGNATURE_FILE@")) as f:
            signature = json.load(f)
        self.runner = StatefulRunner(
            fn,
            signature["inputs"],
            signature["states"],
            signature["outputs"],
            signature["output_dtypes"],
            signature["controls"],
            batched=signature["batched"],
            keyword=signature["keyword"],
            batch_dim=signature["batch_dim"],
        )
        self.names = signature["inputs"] + [s["input_name"] for s in signature["states"]] + signature["control_inputs"]
        self.start, self.end = signature["start"], signature["end"]
        self.store = SequenceStore(signature["states"], signature["idle_s"])

    def execute(self, requests):
        self.store.expire()
        responses = [None] * len(requests)
        batch, live = [], []
        for index, request in enumerate(requests):
            corr = request.correlation_id()
            wanted = request.requested_output_names()
            if corr in (0, "") and not wanted:
                # Triton's direct strategy fills empty batch slots with null requests: nothing to run.
                responses[index] = pb_utils.InferenceResponse(output_tensors=[])
                continue
            tensors = {}
            for name in self.names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            in_sequence = corr not in (0, "")
            if in_sequence:
                self.store.load(corr, tensors, control_flag(tensors, self.start))
            batch.append(tensors)
            live.append((index, corr if in_sequence else None, control_flag(tensors, self.end), wanted))
        if not batch:
            return responses
        try:
            results = run_grouped(self.runner, batch)
        except Exception as exc:  # one failing batch fails its requests, never the server
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            for index, _, _, _ in live:
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=error)
            return responses
        for (index, corr, end, wanted), outputs in zip(live, results):
            if corr is not None:
                self.store.save(corr, outputs, end)
                names = [name for name in outputs if name in wanted]
            else:
                names = list(outputs)  # nbserve keeps the state itself: it needs the state outputs
            tensors = [pb_utils.Tensor(name, _host(outputs[name])) for name in names]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        self.runner = None


def _host(array):
    module = type(array).__module__.split(".")[0]
    if module == "torch":
        return array.detach().cpu().numpy()
    if module == "cupy":
        return array.get()
    return array
'''


def _runtime_source(path: str) -> str:
    """A runtime module's source without its package imports (model.py defines those names)."""
    lines, skipping = [], False
    for line in Path(path).read_text().splitlines():
        if line.startswith("# nbserve-runtime-imports-begin"):
            skipping = True
        elif line.startswith("# nbserve-runtime-imports-end"):
            skipping = False
        elif not skipping:
            lines.append(line)
    return "\n".join(lines)


def model_py_source() -> str:
    from .backends import _python_runtime

    return (MODEL_PY_TEMPLATE.replace("@PYTHON_RUNTIME@", _runtime_source(_python_runtime.__file__))
            .replace("@STATEFUL_RUNTIME@", _runtime_source(_stateful_runtime.__file__))
            .replace("@CALLABLE_FILE@", CALLABLE_FILE).replace("@SIGNATURE_FILE@", SIGNATURE_FILE))


def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    """Write the Python-backend files of a stateful model; return the config to write beside them.

    Raises:
        ExportError: the function cannot be serialized with cloudpickle.
    """
    import cloudpickle

    from .backends.python import _pickled_by_value

    runner = options["runner"]
    specs: list[StateSpec] = options["states"]
    version_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _pickled_by_value(runner.fn, cloudpickle):
            payload = cloudpickle.dumps(runner.fn)
    except Exception as exc:  # whatever the function holds on to: locks, sockets, open files...
        raise ExportError(
            f"the function cannot be serialized with cloudpickle: {type(exc).__name__}: {exc}",
            model=config.name,
            hint="create locks, open files, sockets and clients inside the function, not in variables it closes over",
        ) from exc
    (version_dir / CALLABLE_FILE).write_bytes(payload)
    sb = config.sequence_batching
    flags = {}
    for control_input in sb.control_input:
        control = control_input.control[0]
        values = list(control.int32_false_true) or list(control.fp32_false_true) or list(control.bool_false_true)
        if values and control.kind in (control.CONTROL_SEQUENCE_START, control.CONTROL_SEQUENCE_END):
            flags[control.kind] = [control_input.name, values[1]]
    signature = {
        "inputs": runner.input_names,
        # The initial state comes from Triton (the config's initial_state) with every request.
        "states": [{**s.runtime(), "initial": None} for s in specs],
        "outputs": runner.output_names,
        "output_dtypes": {k: v for k, v in runner.output_dtypes.items()},
        "controls": [{k: c[k] for k in ("name", "dtype", "true")} for c in runner.controls],
        "control_inputs": [c.name for c in sb.control_input],
        "start": flags.get(model_config_pb2().ModelSequenceBatching.Control.CONTROL_SEQUENCE_START),
        "end": flags.get(model_config_pb2().ModelSequenceBatching.Control.CONTROL_SEQUENCE_END),
        "idle_s": (sb.max_sequence_idle_microseconds or DEFAULT_IDLE_MICROSECONDS) / 1e6,
        "batched": runner.batched,
        "keyword": runner.keyword,
        "batch_dim": runner.batch_dim,
    }
    (version_dir / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2))
    (version_dir / "model.py").write_text(model_py_source())
    for spec in specs:
        if spec.zero:
            continue
        folder = version_dir.parent / INITIAL_STATE_DIR
        folder.mkdir(exist_ok=True)
        data = serialize_bytes(spec.initial) if spec.dtype == "BYTES" else np.ascontiguousarray(spec.initial).tobytes()
        (folder / spec.data_file).write_bytes(data)
    out = ModelConfig()
    out.CopyFrom(config)
    out.platform = ""
    out.backend = "python"
    return out


def reads(config: ModelConfig) -> bool:
    # Exported stateful models are Python-backend models: the python backend reads them back.
    return False
