"""ONNX models: a ``onnx.ModelProto``, a path to a ``.onnx`` file, or an ``onnxruntime.InferenceSession``.

In the kernel the model runs in ONNX Runtime with the best execution provider installed (TensorRT,
then CUDA, then CPU); on disk it is ``model.onnx`` for Triton's ``onnxruntime_onnx`` platform. The
signature comes from the graph: when every input and output has a symbolic leading dimension the
model batches (``max_batch_size`` 64 unless told) and dims exclude that dimension.

Triton needs at least one dimension per batch item, so a batched tensor of shape ``[N]`` (or a
scalar, when the model does not batch) is declared with ``dims: [1]`` plus ``reshape { shape: [] }``.
The runners here apply the same reshape, and the writers add it to the exported config; the helpers
for that (:func:`model_shapes`, :func:`add_reshapes`) are shared by the torch and TensorRT backends.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, input_specs, output_specs, with_reshapes
from ..errors import ConfigError, ExportError, SignatureError, require
from ..tensors import TensorSpec, to_numpy
from .base import Adapted, check_declared, module_names, normalize_example

name = "onnx"
MODEL_FILE = "model.onnx"
PLATFORM = "onnxruntime_onnx"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

# ONNX Runtime's type strings -> Triton data types. Strings (BYTES) are out of scope.
ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
}


def matches(obj: Any) -> bool:
    if isinstance(obj, (str, Path)):
        return str(obj).lower().endswith(".onnx")
    names = module_names(obj)
    return "onnx.onnx_ml_pb2.ModelProto" in names or any(
        n.startswith("onnxruntime.") and n.endswith(".InferenceSession") for n in names
    )


# ----------------------------------------------------------------------------- shared reshape helpers
def model_shapes(config: ModelConfig, kind: str) -> dict[str, tuple[int, ...]]:
    """Per tensor, the shape the model itself sees (batch excluded) where the config reshapes it."""
    tensors = config.input if kind == "input" else config.output
    return {t.name: tuple(t.reshape.shape) for t in tensors if t.HasField("reshape")}


def add_reshapes(
    config: ModelConfig, inputs: Mapping[str, Sequence[int]], outputs: Mapping[str, Sequence[int]]
) -> ModelConfig:
    """A copy of ``config`` with ``reshape { shape: ... }`` on the tensors whose model shape differs."""
    return with_reshapes(config, inputs, outputs)


def reshape_to(array: Any, shape: Sequence[int], batched: bool) -> Any:
    """``array`` reshaped to ``[batch, *shape]`` (or ``shape``), for any array library."""
    target = ((array.shape[0],) if batched else ()) + tuple(shape)
    return array.reshape(target)


def single_dims(shape: Sequence[int], batched: bool) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Triton dims for a model tensor shape, and the model shape to reshape to when they differ."""
    dims = tuple(shape[1:] if batched else shape)
    return (dims, None) if dims else ((1,), ())


def model_file(config: ModelConfig, version_dir: Path, default: str, what: str) -> Path:
    """The model file a config points at in its version folder (``default_model_filename`` or default)."""
    path = version_dir / (config.default_model_filename or default)
    if not path.is_file():
        raise ConfigError(
            f"{what} needs its model file in the version folder",
            model=config.name,
            expected=str(path),
            got="no such file",
            hint=f"put the model at {path}, or set default_model_filename in config.pbtxt",
        )
    return path


def check_config_tensors(config: ModelConfig, inputs: Sequence[str], outputs: Sequence[str], what: str) -> None:
    """Every tensor a config names must be one the model has (Triton refuses to load it otherwise)."""
    for kind, tensors, known in (("input", config.input, inputs), ("output", config.output, outputs)):
        for tensor in tensors:
            if tensor.name not in known:
                raise ConfigError(
                    f"config {kind} is not a tensor of the {what}",
                    model=config.name,
                    tensor=tensor.name,
                    expected=f"one of {sorted(known)}",
                    hint=f"name the {kind}s in config.pbtxt as the model does",
                )


# ----------------------------------------------------------------------------- sessions
def _ort() -> Any:
    return require("onnxruntime", "onnx", purpose="running an ONNX model")


def pick_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The execution providers to use: those asked for, else TensorRT, CUDA, CPU as installed."""
    available = _ort().get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ConfigError(
                f"execution provider{'s' if len(missing) > 1 else ''} {', '.join(missing)} not available",
                expected=f"one of {available}",
                got=list(requested),
                hint='install onnxruntime-gpu (pip install "nbserve[gpu]") for the CUDA and TensorRT providers',
            )
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


def open_session(source: str | bytes, providers: Sequence[str] | None, *, model: str | None) -> Any:
    ort = _ort()
    try:
        return ort.InferenceSession(source, providers=pick_providers(providers))
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise SignatureError(
            f"ONNX Runtime cannot load the model: {exc}",
            model=model,
            hint="check the file with onnx.checker.check_model; a ModelProto built with a newer onnx may "
            "need helper.make_model(..., ir_version=9) for this onnxruntime",
        ) from exc


def _source_of(obj: Any) -> str | bytes | Any:
    """What the model file is made from: a path, serialized bytes, or the ModelProto itself."""
    if isinstance(obj, (str, Path)):
        return str(Path(obj).absolute())  # the notebook may change directory before exporting
    if "onnx.onnx_ml_pb2.ModelProto" in module_names(obj):
        return obj
    path, data = getattr(obj, "_model_path", None), getattr(obj, "_model_bytes", None)
    return path or data  # None: a session ONNX Runtime kept no model for (cannot be exported)


def _graph_specs(nodes: Sequence[Any], kind: str, model: str) -> list[tuple[str, str, list[Any] | None]]:
    specs = []
    for node in nodes:
        if node.type == "tensor(string)":
            raise SignatureError(
                f"string (BYTES) {kind}s of ONNX models are not supported",
                model=model,
                tensor=node.name,
                hint="do the text processing in a Python function and feed the ONNX model numbers",
            )
        if node.type not in ORT_TYPES:
            raise SignatureError(
                f"ONNX {kind} type {node.type} has no Triton data type",
                model=model,
                tensor=node.name,
                expected="a tensor of numbers or booleans",
            )
        shape = node.shape
        specs.append((node.name, ORT_TYPES[node.type], None if shape is None else list(shape)))
    return specs


def _leading_is_symbolic(shape: list[Any] | None) -> bool:
    return bool(shape) and not isinstance(shape[0], int)


def _names(given: Sequence[str] | None, graph: Sequence[str], kind: str, model: str) -> list[str]:
    if not given:
        return list(graph)
    given = [str(n) for n in given]
    if len(given) != len(graph):
        raise SignatureError(
            f"{kind}_names has {len(given)} names but the ONNX model has {len(graph)} {kind}s",
            model=model,
            expected=list(graph),
            got=given,
            hint=f"give one name per {kind}, in the graph's order",
        )
    return given


# ----------------------------------------------------------------------------- runner
class OnnxRunner:
    """Runs an ONNX Runtime session on a batch of named arrays (config names -> graph names)."""

    def __init__(
        self,
        session: Any,
        *,
        inputs: Sequence[tuple[str, str]],
        outputs: Sequence[tuple[str, str]],
        batched: bool,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        output_shapes: Mapping[str, tuple[int, ...]] | None = None,
        output_dims: Mapping[str, tuple[int, ...]] | None = None,
        source: Any = None,
    ) -> None:
        self.session = session
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.batched = batched
        # Where the config reshapes a tensor: the model's shape (input and output) and the config's
        # dims (outputs, which the runner returns in the config's shape).
        self.input_shapes = dict(input_shapes or {})
        self.output_shapes = dict(output_shapes or {})
        self.output_dims = {k: tuple(v) for k, v in (output_dims or {}).items() if k in self.output_shapes}
        self.source = source
        self._graph_outputs = [g for _, g in self.outputs]

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        feeds = {}
        for config_name, graph_name in self.inputs:
            if config_name not in inputs:
                continue  # optional input left out
            array = inputs[config_name]
            array = array if isinstance(array, np.ndarray) else to_numpy(array)
            if config_name in self.input_shapes:
                array = reshape_to(array, self.input_shapes[config_name], self.batched)
            feeds[graph_name] = array
        results = self.session.run(self._graph_outputs, feeds)
        out = {}
        for (config_name, _), array in zip(self.outputs, results):
            if config_name in self.output_dims:
                array = reshape_to(array, self.output_dims[config_name], self.batched)
            out[config_name] = array
        return out

    @property
    def renames(self) -> dict[str, str]:
        """Graph name -> config name, for the tensors registered under another name."""
        return {g: c for c, g in [*self.inputs, *self.outputs] if c != g}


def _device(session: Any) -> str:
    providers = session.get_providers()
    return "gpu" if providers and providers[0] in GPU_PROVIDERS else "cpu"


# ----------------------------------------------------------------------------- adapt
def adapt(
    obj: Any,
    *,
    name: str,
    inputs: list[TensorSpec] | None,
    outputs: list[TensorSpec] | None,
    example: Any,
    max_batch_size: int | None,
    options: dict[str, Any],
) -> Adapted:
    providers = options.pop("providers", None)
    input_names = options.pop("input_names", None)
    output_names = options.pop("output_names", None)
    source = _source_of(obj)
    if any(n.endswith(".InferenceSession") for n in module_names(obj)):
        session = obj
    elif isinstance(obj, (str, Path)):
        if not Path(obj).is_file():
            raise SignatureError("ONNX model file not found", model=name, got=str(obj), hint="check the path")
        session = open_session(str(obj), providers, model=name)
    else:
        session = open_session(obj.SerializeToString(), providers, model=name)

    graph_inputs = _graph_specs(session.get_inputs(), "input", name)
    graph_outputs = _graph_specs(session.get_outputs(), "output", name)
    input_names = _names(input_names, [g[0] for g in graph_inputs], "input", name)
    output_names = _names(output_names, [g[0] for g in graph_outputs], "output", name)

    batches = bool(graph_inputs) and all(_leading_is_symbolic(s) for _, _, s in graph_inputs + graph_outputs)
    if max_batch_size is None:
        max_batch_size = 64 if batches else 0
    if max_batch_size > 0 and not batches:
        fixed = next(n for n, _, s in graph_inputs + graph_outputs if not _leading_is_symbolic(s))
        raise SignatureError(
            "the ONNX model has no batch dimension, so it cannot batch",
            model=name,
            tensor=fixed,
            expected="a symbolic (dynamic) first dimension on every input and output",
            hint="register with max_batch_size=0, or export the model with a dynamic batch axis "
            "(torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}))",
        )
    batched = max_batch_size > 0

    if example is not None and any(s is None for _, _, s in graph_outputs):
        graph_outputs = _outputs_from_example(session, example, graph_inputs, graph_outputs, input_names, name)
    inferred_inputs, input_shapes = _specs(graph_inputs, input_names, batched, name, "input")
    inferred_outputs, output_shapes = _specs(graph_outputs, output_names, batched, name, "output")
    inputs = check_declared(inputs, inferred_inputs, kind="input", model=name)
    outputs = check_declared(outputs, inferred_outputs, kind="output", model=name)

    runner = OnnxRunner(
        session,
        inputs=list(zip(input_names, [g[0] for g in graph_inputs])),
        outputs=list(zip(output_names, [g[0] for g in graph_outputs])),
        batched=batched,
        input_shapes=input_shapes,
        output_shapes=output_shapes,
        output_dims={s.name: s.dims for s in outputs},
        source=source,
    )
    return Adapted(
        runner=runner,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        framework="onnx",
        platform=PLATFORM,
        device=_device(session),
        input_reshapes=input_shapes,
        output_reshapes=output_shapes,
    )


def _specs(
    graph: list[tuple[str, str, list[Any] | None]], names: list[str], batched: bool, model: str, kind: str
) -> tuple[list[TensorSpec], dict[str, tuple[int, ...]]]:
    specs, reshapes = [], {}
    for (graph_name, dtype, shape), config_name in zip(graph, names):
        if shape is None:
            raise SignatureError(
                f"the ONNX graph does not say the rank of this {kind}",
                model=model,
                tensor=graph_name,
                hint=f"pass example=... (a batch of inputs) or {kind}s=[TensorSpec(...)]",
            )
        dims, reshape = single_dims([d if isinstance(d, int) and d > 0 else -1 for d in shape], batched)
        if reshape is not None:
            reshapes[config_name] = reshape
        specs.append(TensorSpec(config_name, dims, dtype))
    return specs, reshapes


def _outputs_from_example(
    session: Any, example: Any, graph_inputs: list, graph_outputs: list, input_names: list[str], model: str
) -> list[tuple[str, str, list[Any] | None]]:
    """Fill in outputs of unknown rank by running the example through the session."""
    arrays = normalize_example(example, input_names)
    by_config = dict(zip(input_names, [g[0] for g in graph_inputs]))
    try:
        feeds = {by_config[k]: to_numpy(v) for k, v in arrays.items()}
        results = session.run([g[0] for g in graph_outputs], feeds)
    except Exception as exc:
        raise SignatureError(
            f"running the ONNX model on the example failed: {type(exc).__name__}: {exc}",
            model=model,
            hint=f"pass the example as a dict with the model's inputs {input_names}",
        ) from exc
    return [(n, t, s if s is not None else [-1, *r.shape[1:]]) for (n, t, s), r in zip(graph_outputs, results)]


# ----------------------------------------------------------------------------- files
def rename_tensors(model: Any, renames: Mapping[str, str]) -> Any:
    """A copy of ``model`` whose graph inputs/outputs are renamed (node references included)."""
    onnx = require("onnx", "onnx", purpose="renaming the tensors of an ONNX model")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {o for node in out.graph.node for o in node.output} | {i.name for i in out.graph.input}
    taken |= {init.name for init in out.graph.initializer}
    for old, new in renames.items():
        if new in taken and new not in renames:
            raise ExportError(
                "a new tensor name is already used inside the ONNX graph",
                tensor=new,
                got=f"renaming '{old}' to '{new}'",
                hint="choose another input/output name",
            )
    _rename_graph(out.graph, dict(renames), onnx)
    return out


def _rename_graph(graph: Any, renames: dict[str, str], onnx: Any) -> None:
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        for attribute in node.attribute:  # If/Loop/Scan bodies may read outer tensors by name
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attribute.g, renames, onnx)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    _rename_graph(sub, renames, onnx)
    for values in (graph.input, graph.output, graph.value_info):
        for value in values:
            value.name = renames.get(value.name, value.name)


def _load_proto(source: Any) -> Any:
    onnx = require("onnx", "onnx", purpose="rewriting an ONNX model")
    if isinstance(source, bytes):
        return onnx.load_from_string(source)
    if isinstance(source, str):
        return onnx.load(source)
    return source


def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    runner = options.get("runner")
    if not isinstance(runner, OnnxRunner) or runner.source is None:
        raise ExportError(
            "this ONNX model has no file or bytes to write",
            model=config.name,
            hint="register the ONNX path or ModelProto rather than an InferenceSession built from bytes",
        )
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / MODEL_FILE
    source, renames = runner.source, runner.renames
    if renames:
        target.write_bytes(rename_tensors(_load_proto(source), renames).SerializeToString())
    elif isinstance(source, str):
        shutil.copyfile(source, target)
    elif isinstance(source, bytes):
        target.write_bytes(source)
    else:
        target.write_bytes(source.SerializeToString())
    out = ModelConfig()
    out.CopyFrom(config)
    out.platform, out.backend = PLATFORM, ""
    return add_reshapes(out, runner.input_shapes, runner.output_shapes)


def reads(config: ModelConfig) -> bool:
    return config.platform == PLATFORM or config.backend == "onnxruntime"


def read(config: ModelConfig, version_dir: Path) -> Adapted:
    path = model_file(config, version_dir, MODEL_FILE, "an ONNX model")
    session = open_session(str(path), None, model=config.name)
    check_config_tensors(
        config, [n.name for n in session.get_inputs()], [n.name for n in session.get_outputs()], "ONNX graph"
    )
    runner = OnnxRunner(
        session,
        inputs=[(t.name, t.name) for t in config.input],
        outputs=[(t.name, t.name) for t in config.output],
        batched=config.max_batch_size > 0,
        input_shapes=model_shapes(config, "input"),
        output_shapes=model_shapes(config, "output"),
        output_dims={t.name: tuple(t.dims) for t in config.output},
        source=str(path),
    )
    return Adapted(
        runner=runner,
        inputs=input_specs(config),
        outputs=output_specs(config),
        max_batch_size=config.max_batch_size,
        framework="onnx",
        platform=PLATFORM,
        device=_device(session),
    )
