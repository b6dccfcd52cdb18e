"""TensorRT engines: a ``tensorrt.ICudaEngine``, a ``.plan``/``.engine`` file, or an ONNX model to build one.

TensorRT needs the ``tensorrt`` package and an NVIDIA GPU; without either, registering fails with an
error that says so and names ``pip install "nbserve[gpu]"``. ``framework="tensorrt"`` builds an engine
from an ONNX path or ``ModelProto`` (a dynamic batch axis gets an optimization profile from 1 to
``max_batch_size``; other dynamic dims must be fixed with ``inputs=[TensorSpec(...)]``).

The signature is the engine's I/O tensors: when every one has a dynamic (-1) leading dimension the
engine batches, up to the largest batch its first optimization profile allows. Inputs are copied to
the GPU (torch CUDA tensors, else CuPy arrays), the engine runs on the current stream, and outputs
stay on the GPU. On disk the engine is ``model.plan`` for Triton's ``tensorrt_plan`` platform; a plan
is tied to the GPU model and TensorRT version that built it.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, input_specs, output_specs
from ..errors import ConfigError, ExportError, MissingDependency, SignatureError, require
from ..tensors import TensorSpec, array_library, numpy_dtype, torch_dtype
from .base import Adapted, check_declared, module_names
from .onnx import (
    add_reshapes,
    check_config_tensors,
    model_file,
    model_shapes,
    rename_tensors,
    reshape_to,
    single_dims,
)

name = "tensorrt"
MODEL_FILE = "model.plan"
PLATFORM = "tensorrt_plan"
ENGINE_SUFFIXES = (".plan", ".engine")
INSTALL_HINT = 'pip install "nbserve[gpu]" on a machine with an NVIDIA GPU'

# TensorRT DataType names -> Triton data types (FP8, INT4 and friends have no Triton type).
TRT_TYPES = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "BF16": "BF16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}


def matches(obj: Any) -> bool:
    if isinstance(obj, (str, Path)):
        return str(obj).lower().endswith(ENGINE_SUFFIXES)
    return any(n.startswith("tensorrt") and n.endswith(".ICudaEngine") for n in module_names(obj))


# ----------------------------------------------------------------------------- requirements
def _gpu_library() -> str | None:
    """'torch' or 'cupy' when either sees a CUDA device; None when no GPU is visible."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return "torch"
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return "cupy"
        except Exception:  # noqa: BLE001 - CuPy raises CUDARuntimeError without a driver
            pass
    return None


def require_tensorrt(model: str | None) -> tuple[Any, str]:
    """The tensorrt module and the GPU array library, or an error saying which is missing."""
    trt = require("tensorrt", "gpu", purpose="serving a TensorRT engine")
    library = _gpu_library()
    if library is None:
        if importlib.util.find_spec("torch") is None and importlib.util.find_spec("cupy") is None:
            raise MissingDependency("cupy", "gpu", purpose="moving tensors to the GPU for TensorRT")
        raise ConfigError(
            "TensorRT engines run only on an NVIDIA GPU, and no GPU is available here",
            model=model,
            expected="a CUDA device (torch.cuda.is_available() or CuPy sees one)",
            hint=f"{INSTALL_HINT}; on a CPU, register the ONNX model instead",
        )
    return trt, library


_LOGGER: Any = None


def _logger(trt: Any) -> Any:
    global _LOGGER  # TensorRT wants one logger per process
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


# ----------------------------------------------------------------------------- engines
def deserialize(trt: Any, data: bytes, *, model: str | None) -> tuple[Any, Any]:
    runtime = trt.Runtime(_logger(trt))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise SignatureError(
            "TensorRT could not deserialize the engine",
            model=model,
            hint="a plan only loads with the TensorRT version and GPU model that built it; rebuild it "
            "here, e.g. register the ONNX model with framework='tensorrt'",
        )
    return engine, runtime


def build_from_onnx(
    trt: Any, onnx_bytes: bytes, *, declared: Sequence[TensorSpec] | None, max_batch_size: int | None, model: str
) -> tuple[Any, Any, int]:
    """Build an engine from ONNX; returns the engine, its runtime and the max batch size used."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SignatureError(f"TensorRT cannot parse the ONNX model: {errors}", model=model,
                             hint="check the opset and operators against TensorRT's ONNX support")
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = {t.name: list(t.shape) for t in tensors}
    batches = all(s and s[0] == -1 for s in shapes.values())
    if max_batch_size is None:
        max_batch_size = 64 if batches else 0
    by_name = {s.name: s for s in declared or ()}
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    dynamic = False
    for tensor_name, shape in shapes.items():
        batch = max_batch_size > 0 and bool(shape) and shape[0] == -1
        rest = shape[1:] if batch else shape
        if -1 in rest:
            spec = by_name.get(tensor_name)
            if spec is None or len(spec.dims) != len(rest) or -1 in spec.dims:
                raise SignatureError(
                    "TensorRT needs a size for every dynamic dimension except the batch",
                    model=model,
                    tensor=tensor_name,
                    got=shape,
                    hint=f'declare inputs=[TensorSpec("{tensor_name}", [sizes without the batch], dtype)]',
                )
            rest = list(spec.dims)
        if batch or -1 in shape:
            dynamic = True
            low = ([1] if batch else []) + rest
            high = ([max_batch_size] if batch else []) + rest
            profile.set_shape(tensor_name, low, high, high)
    if dynamic:
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SignatureError("TensorRT could not build an engine from the ONNX model", model=model,
                             hint="run trtexec --onnx=model.onnx --verbose to see why")
    engine, runtime = deserialize(trt, bytes(serialized), model=model)
    return engine, runtime, max_batch_size


IO = list[tuple[str, str, list[int]]]  # (tensor name, Triton dtype, engine shape) per tensor


def _engine_io(engine: Any, trt: Any, model: str) -> tuple[IO, IO]:
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        tensor = engine.get_tensor_name(i)
        dtype_name = engine.get_tensor_dtype(tensor).name
        if dtype_name not in TRT_TYPES:
            raise SignatureError(f"TensorRT data type {dtype_name} has no Triton data type", model=model,
                                 tensor=tensor, expected=", ".join(TRT_TYPES))
        entry = (tensor, TRT_TYPES[dtype_name], [int(d) for d in engine.get_tensor_shape(tensor)])
        (inputs if engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT else outputs).append(entry)
    return inputs, outputs


def _profile_max_batch(engine: Any, inputs: IO) -> int:
    """The largest batch the engine's first optimization profile accepts on every input."""
    limits = []
    for tensor, _, shape in inputs:
        if shape and shape[0] == -1:
            _, _, high = engine.get_tensor_profile_shape(tensor, 0)
            limits.append(int(high[0]))
    return min(limits) if limits else 0


# ----------------------------------------------------------------------------- runner
class _DeviceArrays:
    """Device buffers through torch (CUDA tensors) or CuPy, whichever is present."""

    def __init__(self, library: str) -> None:
        self.library = library
        self.module = require(library, "gpu", purpose="GPU buffers for TensorRT")
        if library == "torch":
            from .torch import _silence_readonly_warning

            _silence_readonly_warning(self.module)

    def to_device(self, value: Any, dtype: str) -> Any:
        if self.library == "torch":
            torch = self.module
            if array_library(value) == "cupy":
                value = torch.from_dlpack(value)
            tensor = value if array_library(value) == "torch" else torch.from_numpy(np.asarray(value))
            return tensor.to(device="cuda", dtype=torch_dtype(dtype), non_blocking=True).contiguous()
        cupy = self.module
        if array_library(value) == "torch":
            value = cupy.from_dlpack(value.contiguous())
        return cupy.ascontiguousarray(cupy.asarray(value, dtype=numpy_dtype(dtype)))

    def empty(self, shape: Sequence[int], dtype: str) -> Any:
        if self.library == "torch":
            return self.module.empty(tuple(shape), dtype=torch_dtype(dtype), device="cuda")
        return self.module.empty(tuple(shape), dtype=numpy_dtype(dtype))

    def pointer(self, array: Any) -> int:
        return int(array.data_ptr()) if self.library == "torch" else int(array.data.ptr)

    def stream(self) -> Any:
        if self.library == "torch":
            return self.module.cuda.current_stream()
        return self.module.cuda.get_current_stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.cuda_stream) if self.library == "torch" else int(stream.ptr)


class TensorRTRunner:
    """Runs an engine on a batch of named arrays; outputs are device arrays."""

    def __init__(
        self,
        engine: Any,
        *,
        library: str,
        inputs: Sequence[tuple[str, str]],
        outputs: Sequence[tuple[str, str]],
        dtypes: Mapping[str, str],
        batched: bool,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        output_shapes: Mapping[str, tuple[int, ...]] | None = None,
        output_dims: Mapping[str, tuple[int, ...]] | None = None,
        runtime: Any = None,
        source: Path | None = None,
    ) -> None:
        self.engine = engine
        self.runtime = runtime  # the engine must not outlive its runtime
        self.inputs = list(inputs)  # (config name, engine name)
        self.outputs = list(outputs)
        self.dtypes = dict(dtypes)  # engine name -> Triton dtype
        self.batched = batched
        self.input_shapes = dict(input_shapes or {})
        self.output_shapes = dict(output_shapes or {})
        self.output_dims = {k: tuple(v) for k, v in (output_dims or {}).items() if k in self.output_shapes}
        self.source = source
        self.arrays = _DeviceArrays(library)
        self.context = engine.create_execution_context()
        # An execution context holds shapes and addresses between the calls below: one batch at a time.
        self._lock = threading.Lock()
        self._all_outputs = [
            engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
            if engine.get_tensor_mode(engine.get_tensor_name(i)).name == "OUTPUT"  # trt.TensorIOMode
        ]

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            keep = []
            for config_name, engine_name in self.inputs:
                array = self.arrays.to_device(inputs[config_name], self.dtypes[engine_name])
                if config_name in self.input_shapes:
                    array = reshape_to(array, self.input_shapes[config_name], self.batched)
                keep.append(array)
                self.context.set_input_shape(engine_name, tuple(array.shape))
                self.context.set_tensor_address(engine_name, self.arrays.pointer(array))
            results = {}
            for engine_name in self._all_outputs:  # every output needs memory, wanted or not
                array = self.arrays.empty(list(self.context.get_tensor_shape(engine_name)), self.dtypes[engine_name])
                results[engine_name] = array
                self.context.set_tensor_address(engine_name, self.arrays.pointer(array))
            stream = self.arrays.stream()
            if not self.context.execute_async_v3(self.arrays.stream_handle(stream)):
                raise RuntimeError("TensorRT failed to run the engine (see the TensorRT log above)")
            stream.synchronize()  # outputs are complete, and the inputs in `keep` may be freed
        out = {}
        for config_name, engine_name in self.outputs:
            array = results[engine_name]
            if config_name in self.output_dims:
                array = reshape_to(array, self.output_dims[config_name], self.batched)
            out[config_name] = array
        return out


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
    input_names = options.pop("input_names", None)
    output_names = options.pop("output_names", None)
    trt, library = require_tensorrt(name)
    source: Path | None = None
    runtime = None
    is_onnx = (isinstance(obj, (str, Path)) and str(obj).lower().endswith(".onnx")) or (
        "onnx.onnx_ml_pb2.ModelProto" in module_names(obj)
    )
    if is_onnx:
        proto = obj if not isinstance(obj, (str, Path)) else require("onnx", "onnx").load(str(obj))
        renames = _onnx_renames(proto, input_names, output_names, name)
        if renames:
            proto = rename_tensors(proto, renames)
        engine, runtime, max_batch_size = build_from_onnx(
            trt, proto.SerializeToString(), declared=inputs, max_batch_size=max_batch_size, model=name
        )
    else:
        if input_names or output_names:
            raise SignatureError(
                "a built TensorRT engine keeps the tensor names it was built with",
                model=name,
                hint="drop input/output names, or register the ONNX model with framework='tensorrt' to rename",
            )
        if isinstance(obj, (str, Path)):
            source = Path(obj)
            if not source.is_file():
                raise SignatureError("TensorRT engine file not found", model=name, got=str(obj), hint="check the path")
            engine, runtime = deserialize(trt, source.read_bytes(), model=name)
        else:
            engine = obj

    engine_inputs, engine_outputs = _engine_io(engine, trt, name)
    batches = bool(engine_inputs) and all(s and s[0] == -1 for _, _, s in engine_inputs + engine_outputs)
    limit = _profile_max_batch(engine, engine_inputs) if batches else 0
    if max_batch_size is None:
        max_batch_size = min(64, limit) if batches else 0
    if max_batch_size > limit:
        raise SignatureError(
            "max_batch_size is larger than the engine accepts",
            model=name,
            expected=f"at most {limit} (the engine's optimization profile)" if batches
            else "0: the engine has no batch dimension",
            got=max_batch_size,
            hint=f"register with max_batch_size={limit}, or rebuild the engine with a larger profile",
        )
    batched = max_batch_size > 0
    inferred_inputs, input_shapes = _specs(engine_inputs, batched)
    inferred_outputs, output_shapes = _specs(engine_outputs, batched)
    inputs = check_declared(inputs, inferred_inputs, kind="input", model=name)
    outputs = check_declared(outputs, inferred_outputs, kind="output", model=name)
    runner = TensorRTRunner(
        engine,
        library=library,
        inputs=[(s.name, s.name) for s in inputs],
        outputs=[(s.name, s.name) for s in outputs],
        dtypes={n: t for n, t, _ in engine_inputs + engine_outputs},
        batched=batched,
        input_shapes=input_shapes,
        output_shapes=output_shapes,
        output_dims={s.name: s.dims for s in outputs},
        runtime=runtime,
        source=source,
    )
    return Adapted(
        runner=runner,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        framework="tensorrt",
        platform=PLATFORM,
        device="gpu",
    )


def _specs(io: IO, batched: bool) -> tuple[list[TensorSpec], dict[str, tuple[int, ...]]]:
    specs, reshapes = [], {}
    for tensor, dtype, shape in io:
        dims, reshape = single_dims(shape, batched)
        if reshape is not None:
            reshapes[tensor] = reshape
        specs.append(TensorSpec(tensor, dims, dtype))
    return specs, reshapes


def _onnx_renames(proto: Any, input_names: Sequence[str] | None, output_names: Sequence[str] | None,
                  model: str) -> dict[str, str]:
    initializers = {i.name for i in proto.graph.initializer}
    graph_inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    graph_outputs = [o.name for o in proto.graph.output]
    renames = {}
    for kind, given, graph in (("input", input_names, graph_inputs), ("output", output_names, graph_outputs)):
        if not given:
            continue
        if len(given) != len(graph):
            raise SignatureError(f"{kind}_names has {len(given)} names but the ONNX model has {len(graph)} {kind}s",
                                 model=model, expected=graph, got=list(given))
        renames.update({old: str(new) for old, new in zip(graph, given) if old != new})
    return renames


# ----------------------------------------------------------------------------- files
def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    runner = options.get("runner")
    if not isinstance(runner, TensorRTRunner):
        raise ExportError("this TensorRT model has no engine to write", model=config.name)
    version_dir.mkdir(parents=True, exist_ok=True)
    if runner.source is not None:
        shutil.copyfile(runner.source, version_dir / MODEL_FILE)
    else:
        (version_dir / MODEL_FILE).write_bytes(bytes(runner.engine.serialize()))
    out = ModelConfig()
    out.CopyFrom(config)
    out.platform, out.backend = PLATFORM, ""
    return add_reshapes(out, runner.input_shapes, runner.output_shapes)


def reads(config: ModelConfig) -> bool:
    return config.platform == PLATFORM or config.backend == "tensorrt"


def read(config: ModelConfig, version_dir: Path) -> Adapted:
    trt, library = require_tensorrt(config.name)
    path = model_file(config, version_dir, MODEL_FILE, "a TensorRT model")
    engine, runtime = deserialize(trt, path.read_bytes(), model=config.name)
    engine_inputs, engine_outputs = _engine_io(engine, trt, config.name)
    check_config_tensors(config, [n for n, _, _ in engine_inputs], [n for n, _, _ in engine_outputs], "engine")
    dtypes = {n: t for n, t, _ in engine_inputs + engine_outputs}
    runner = TensorRTRunner(
        engine,
        library=library,
        inputs=[(t.name, t.name) for t in config.input],
        outputs=[(t.name, t.name) for t in config.output],
        dtypes=dtypes,
        batched=config.max_batch_size > 0,
        input_shapes=model_shapes(config, "input"),
        output_shapes=model_shapes(config, "output"),
        output_dims={t.name: tuple(t.dims) for t in config.output},
        runtime=runtime,
        source=path,
    )
    return Adapted(
        runner=runner,
        inputs=input_specs(config),
        outputs=output_specs(config),
        max_batch_size=config.max_batch_size,
        framework="tensorrt",
        platform=PLATFORM,
        device="gpu",
    )
