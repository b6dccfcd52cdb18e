"""PyTorch models: eager ``torch.nn.Module`` instances (notebook-defined ones too) and TorchScript.

In the kernel the live module runs under ``torch.inference_mode()`` on its own device: NumPy inputs
become tensors without a copy (``torch.from_numpy``), CPU models return NumPy and CUDA models keep
their outputs on the GPU. Registering puts the module in eval mode, as serving it means inference.

The signature comes from an example batch (its leading dimension is the batch). Tensor names follow
the conventions of Triton's PyTorch backend so the config is the same in the kernel and on disk:
inputs are named after ``forward()``'s parameters, outputs ``output__0``, ``output__1``, ... (dict
outputs ``<key>__<index>``). How a config name binds to a ``forward()`` argument or a returned value
is decided by :func:`input_positions` / :func:`output_positions`, which mirror the backend's rules
(forward-argument names, then ``<name>__<index>``, else the config's order), both when the runner
calls the live module and when Triton calls the exported one.

On disk a model is ``model.pt`` (TorchScript: scripted when possible, else traced with the example)
for the ``pytorch_libtorch`` platform, or ``model.onnx`` for ``onnxruntime_onnx`` with
``torch_format="onnx"`` (given to ``register`` or as a ``write_repository`` option).
"""

from __future__ import annotations

import contextlib
import inspect
import keyword
import shutil
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, input_specs, output_specs
from ..errors import ConfigError, ExportError, SignatureError, require
from ..tensors import TensorSpec, array_library, to_numpy
from .base import Adapted, check_declared, module_names, normalize_example, specs_from_arrays, synthesize_example
from .onnx import add_reshapes, model_file, model_shapes, reshape_to

name = "torch"
MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
PLATFORM = "pytorch_libtorch"
ONNX_PLATFORM = "onnxruntime_onnx"
FORMATS = ("torchscript", "onnx")


def matches(obj: Any) -> bool:
    # ScriptModules are nn.Modules too; user subclasses (defined in __main__) have Module in their MRO.
    return "torch.nn.modules.module.Module" in module_names(obj)


def _torch() -> Any:
    return require("torch", "torch", purpose="serving a PyTorch model")


# ----------------------------------------------------------------------------- naming (Triton's rules)
def named_index(tensor: str) -> int | None:
    """The index in ``<name>__<index>``, as Triton's PyTorch backend reads it (after the first ``__``)."""
    start = tensor.find("__")
    if start == -1:
        return None
    index = tensor[start + 2 :]
    return int(index) if index.isdigit() else None


def input_positions(names: Sequence[str], forward_args: Sequence[str]) -> list[int]:
    """Which ``forward()`` argument each config input is: by name, by ``__<index>``, else by order."""
    if all(n in forward_args for n in names):
        return [list(forward_args).index(n) for n in names]
    indices = [named_index(n) for n in names]
    if all(i is not None for i in indices):
        return indices  # type: ignore[return-value]
    return list(range(len(names)))


def output_positions(names: Sequence[str]) -> list[int]:
    """Which returned value each config output is: by ``__<index>``, else by order."""
    indices = [named_index(n) for n in names]
    if names and all(i is not None for i in indices):
        return indices  # type: ignore[return-value]
    return list(range(len(names)))


def forward_arguments(module: Any) -> list[str] | None:
    """Names of ``forward()``'s tensor parameters in order; None when it takes ``*args``."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # TorchScript
        return [a.name for a in schema.arguments[1:]]
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    names = []
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return names or None
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    return names


def _check_positions(positions: list[int], names: list[str], count: int, kind: str, model: str, hint: str) -> None:
    if sorted(positions) == list(range(count)):
        return
    bad = next((n for n, p in zip(names, positions) if p >= count or positions.count(p) > 1), names[0])
    raise SignatureError(
        f"the {kind} names do not map one-to-one onto the model's {kind}s",
        model=model,
        tensor=bad,
        expected=f"{count} {kind}s numbered 0..{count - 1}",
        got=dict(zip(names, positions)),
        hint=hint,
    )


# ----------------------------------------------------------------------------- runner
_READONLY_LOCK = threading.Lock()
_readonly_warned = False


def _silence_readonly_warning(torch: Any) -> None:
    """Spend torch's once-per-process "NumPy array is not writable" warning up front.

    Request tensors decoded from the wire are read-only views of the request body. The model only
    reads them (it runs under inference_mode), so sharing the memory is safe, and the warning would
    otherwise surface in the middle of serving (and as an error under strict warning filters).
    """
    global _readonly_warned
    with _READONLY_LOCK:
        if _readonly_warned:
            return
        array = np.zeros(1, dtype=np.float32)
        array.flags.writeable = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.from_numpy(array)
        _readonly_warned = True


def _as_tensor(torch: Any, value: Any, device: Any) -> Any:
    library = array_library(value)
    if library == "torch":
        tensor = value
    elif library == "cupy":
        tensor = torch.from_dlpack(value)
    else:
        array = np.asarray(value)
        if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: same bits as torch.bfloat16
            tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        elif any(s < 0 for s in array.strides):
            tensor = torch.from_numpy(np.ascontiguousarray(array))
        else:
            tensor = torch.from_numpy(array)
    if tensor.device != device:
        tensor = tensor.to(device, non_blocking=True)
    return tensor


def flatten_outputs(result: Any, keys: Sequence[Any] | None = None) -> tuple[list[Any], str, list[Any] | None]:
    """The model's return value as a list of tensors, its kind, and dict keys in order."""
    if isinstance(result, Mapping):
        keys = list(keys) if keys is not None else list(result)
        return [result[k] for k in keys], "dict", keys
    if isinstance(result, (tuple, list)):
        return list(result), "list" if isinstance(result, list) else "tuple", None
    return [result], "tensor", None


class TorchRunner:
    """Calls a torch module on a batch of named arrays, binding names the way Triton does."""

    def __init__(
        self,
        module: Any,
        *,
        input_names: Sequence[str],
        input_positions: Sequence[int],
        output_names: Sequence[str],
        output_positions: Sequence[int],
        output_keys: Sequence[str] | None = None,
        batched: bool = True,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        output_shapes: Mapping[str, tuple[int, ...]] | None = None,
        output_dims: Mapping[str, tuple[int, ...]] | None = None,
        forward_args: Sequence[str] | None = None,
        source: Path | None = None,
    ) -> None:
        torch = _torch()
        _silence_readonly_warning(torch)
        self._torch = torch
        self.module = module
        self.input_names = list(input_names)
        self.input_positions = list(input_positions)
        self.output_names = list(output_names)
        self.output_positions = list(output_positions)
        self.output_keys = list(output_keys) if output_keys is not None else None
        self.batched = batched
        # Where the config reshapes a tensor (Triton needs >= 1 dim per item): the model's shape.
        self.input_shapes = dict(input_shapes or {})
        self.output_shapes = dict(output_shapes or {})
        self.output_dims = {k: tuple(v) for k, v in (output_dims or {}).items() if k in self.output_shapes}
        self.forward_args = list(forward_args) if forward_args is not None else None
        self.source = source  # the model.pt this runner was read from, copied as is on export
        self.device = module_device(module)
        self.to_host = self.device.type != "cuda"

    def call(self, inputs: Mapping[str, Any]) -> Any:
        """The module's raw return value for a batch of named inputs."""
        args: list[Any] = [None] * len(self.input_names)
        for name, position in zip(self.input_names, self.input_positions):
            value = inputs[name]
            tensor = _as_tensor(self._torch, value, self.device)
            if name in self.input_shapes:
                tensor = reshape_to(tensor, self.input_shapes[name], self.batched)
            args[position] = tensor
        with self._torch.inference_mode():
            return self.module(*args)

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        flat, _, _ = flatten_outputs(self.call(inputs), self.output_keys)
        out = {}
        for name, position in zip(self.output_names, self.output_positions):
            tensor = flat[position]
            if name in self.output_dims:
                tensor = reshape_to(tensor, self.output_dims[name], self.batched)
            out[name] = to_numpy(tensor) if self.to_host else tensor
        return out


def module_device(module: Any) -> Any:
    torch = _torch()
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


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
    _torch()
    torch_format = options.pop("torch_format", None)
    if torch_format is not None and torch_format not in FORMATS:
        raise ConfigError(f"unknown torch_format {torch_format!r}", model=name, expected=" or ".join(FORMATS))
    given_inputs = options.pop("input_names", None) or ([s.name for s in inputs] if inputs else None)
    given_outputs = options.pop("output_names", None) or ([s.name for s in outputs] if outputs else None)
    if max_batch_size is None:
        max_batch_size = 64
    batched = max_batch_size > 0
    obj.eval()
    forward_args = forward_arguments(obj)

    if example is None:
        if not (inputs and outputs):
            raise SignatureError(
                "cannot infer the signature of a torch model without an example",
                model=name,
                hint="pass example=... (a batch of inputs: a tensor/array, a tuple in forward()'s order, "
                "or a dict by argument name), or both inputs=[TensorSpec(...)] and outputs=[TensorSpec(...)]",
            )
        input_names, arrays = [s.name for s in inputs], None
    else:
        input_names, arrays = _example_inputs(example, given_inputs, forward_args, name)
    input_pos = input_positions(input_names, forward_args or [])
    _check_positions(
        input_pos, input_names, len(input_names), "input", name,
        hint="name inputs after forward()'s arguments (the first ones, all of them), or input__0, input__1, ...",
    )

    if arrays is None:  # declared inputs and outputs, no example: trust them
        output_names = [s.name for s in outputs]
        output_pos = output_positions(output_names)
        _check_positions(output_pos, output_names, len(output_names), "output", name, hint=_OUTPUT_HINT)
        runner = TorchRunner(
            obj, input_names=input_names, input_positions=input_pos, output_names=output_names,
            output_positions=output_pos, batched=batched, forward_args=forward_args,
        )
        return _adapted(runner, inputs, outputs, max_batch_size, torch_format, example=None)

    for key, array in arrays.items():
        if getattr(array, "dtype", None) is not None and str(array.dtype) == "object":
            raise SignatureError(
                "torch models take tensors of numbers, not strings",
                model=name,
                tensor=key,
                hint="tokenize or encode text in a Python function before the model",
            )
    inferred_inputs = specs_from_arrays(arrays, batched=batched, kind="input", model=name)
    inputs = check_declared(inputs, inferred_inputs, kind="input", model=name)
    input_shapes = {
        k: tuple(v.shape[1:] if batched else v.shape) for k, v in arrays.items() if v.ndim == int(batched)
    }

    probe = TorchRunner(
        obj, input_names=input_names, input_positions=input_pos, output_names=[], output_positions=[],
        batched=batched, input_shapes=input_shapes, forward_args=forward_args,
    )
    try:
        result = probe.call(arrays)
    except Exception as exc:  # the user's model: anything can come out
        raise SignatureError(
            f"running the model on the example failed: {type(exc).__name__}: {exc}",
            model=name,
            hint=f"check the example's shapes and dtypes against forward({', '.join(forward_args or [])})",
        ) from exc
    flat, kind, keys = flatten_outputs(result)
    torch = _torch()
    bad = next((i for i, t in enumerate(flat) if not torch.is_tensor(t)), None)
    if bad is not None:
        raise SignatureError(
            "the model must return a tensor, a tuple/list of tensors or a dict of tensors",
            model=name,
            got=f"{type(flat[bad]).__name__} at position {bad}" if kind != "tensor" else type(result).__name__,
            hint="return tensors only (nested structures are not supported); wrap the model to flatten them",
        )
    if given_outputs is None:
        output_names = [f"{k}__{i}" for i, k in enumerate(keys)] if keys else [f"output__{i}" for i in range(len(flat))]
    else:
        output_names = [str(n) for n in given_outputs]
        if len(output_names) != len(flat):
            raise SignatureError(
                "a name is needed for every value the model returns",
                model=name,
                expected=f"{len(flat)} output names",
                got=output_names,
                hint="pass one name per returned tensor, in order",
            )
    output_pos = output_positions(output_names)
    _check_positions(output_pos, output_names, len(flat), "output", name, hint=_OUTPUT_HINT)
    result_arrays = {n: flat[p] for n, p in zip(output_names, output_pos)}
    inferred_outputs = specs_from_arrays(result_arrays, batched=batched, kind="output", model=name)
    outputs = check_declared(outputs, inferred_outputs, kind="output", model=name)
    _check_batch_preserved(result_arrays, arrays, batched, name)
    output_shapes = {
        k: tuple(v.shape[1:] if batched else v.shape) for k, v in result_arrays.items() if v.dim() == int(batched)
    }
    runner = TorchRunner(
        obj,
        input_names=input_names,
        input_positions=input_pos,
        output_names=output_names,
        output_positions=output_pos,
        output_keys=keys,
        batched=batched,
        input_shapes=input_shapes,
        output_shapes=output_shapes,
        output_dims={s.name: s.dims for s in outputs},
        forward_args=forward_args,
    )
    return _adapted(runner, inputs, outputs, max_batch_size, torch_format, example=arrays)


_OUTPUT_HINT = "name outputs output__0, output__1, ... (the index is the position in what forward() returns)"


def _adapted(runner: TorchRunner, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int,
             torch_format: str | None, example: dict[str, Any] | None) -> Adapted:
    writer_options: dict[str, Any] = {"example": example}
    if torch_format:
        writer_options["torch_format"] = torch_format
    return Adapted(
        runner=runner,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        framework="torch",
        platform=ONNX_PLATFORM if torch_format == "onnx" else PLATFORM,
        device="gpu" if runner.device.type == "cuda" else "cpu",
        writer_options=writer_options,
        input_reshapes=runner.input_shapes,
        output_reshapes=runner.output_shapes,
    )


def _example_inputs(
    example: Any, given: Sequence[str] | None, forward_args: list[str] | None, model: str
) -> tuple[list[str], dict[str, Any]]:
    """Input names and the example by name: given names, else forward()'s arguments, else input__<i>."""
    if isinstance(example, Mapping):
        keys = [str(k) for k in example]
        if given is not None:
            names = [str(n) for n in given]
        elif forward_args is None:  # forward(*args): the dict's order is the argument order
            names = keys
        elif all(k in forward_args for k in keys):
            names = sorted(keys, key=forward_args.index)  # dicts may come in any order
        else:
            unknown = next(k for k in keys if k not in forward_args)
            raise SignatureError(
                "the example names an input that forward() does not take",
                model=model,
                tensor=unknown,
                expected=f"forward() arguments {forward_args}",
                got=keys,
                hint="key the example by forward()'s argument names, or pass inputs=[...] names",
            )
        arrays = normalize_example(example, names)
        missing = [n for n in names if n not in arrays]
        if missing or len(arrays) != len(names):
            raise SignatureError(
                "the example's names differ from the input names",
                model=model,
                tensor=missing[0] if missing else None,
                expected=names,
                got=keys,
                hint="key the example by the input names",
            )
        return names, {n: arrays[n] for n in names}
    count = len(example) if isinstance(example, (tuple, list)) and example and hasattr(example[0], "shape") else 1
    if given is not None:
        names = [str(n) for n in given]
    elif forward_args and len(forward_args) >= count:
        names = forward_args[:count]
    else:
        names = [f"input__{i}" for i in range(count)]
    return names, normalize_example(example, names)


def _check_batch_preserved(result: dict[str, Any], arrays: dict[str, Any], batched: bool, model: str) -> None:
    if not batched or not arrays:
        return
    rows = next(iter(arrays.values())).shape[0]
    for key, value in result.items():
        if value.dim() == 0 or value.shape[0] != rows:
            raise SignatureError(
                "a batched model must return one row per input row",
                model=model,
                tensor=key,
                expected=f"leading dimension {rows}",
                got=f"shape {list(value.shape)}",
                hint="return per-row results, or register with max_batch_size=0 if the model does not batch",
            )


# ----------------------------------------------------------------------------- export
def _export_args(runner: TorchRunner, example: Mapping[str, Any] | None, config: ModelConfig) -> tuple[Any, ...]:
    """The example as forward()'s positional arguments, on the model's device."""
    torch = runner._torch
    if example is None:  # declared signature only: a synthetic batch of two (1 invites specialization)
        batched = config.max_batch_size > 0
        example = synthesize_example(input_specs(config), batched=batched)
        if batched:
            example = {k: np.concatenate([v, v]) for k, v in example.items()}
    args: list[Any] = [None] * len(runner.input_names)
    for name, position in zip(runner.input_names, runner.input_positions):
        tensor = _as_tensor(torch, example[name], runner.device)
        if name in runner.input_shapes:
            tensor = reshape_to(tensor, runner.input_shapes[name], runner.batched)
        args[position] = tensor
    return tuple(args)


def _wrapper(runner: TorchRunner) -> Any:
    """A module with forward()'s argument names that returns a flat tuple of tensors.

    Triton's PyTorch backend takes a Tensor or a tuple of Tensors, never a dict or list; keeping the
    argument names keeps its forward-argument binding identical to the live module's.
    """
    torch = runner._torch
    count = len(runner.input_names)
    args = runner.forward_args[:count] if runner.forward_args and len(runner.forward_args) >= count else [
        f"input__{i}" for i in range(count)
    ]
    if not all(a.isidentifier() and not keyword.iskeyword(a) and a != "self" for a in args):
        args = [f"input__{i}" for i in range(count)]
    keys = runner.output_keys

    class _Flat(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def flat(self, *values: Any) -> Any:
            result = self.model(*values)
            return result if torch.is_tensor(result) else tuple(flatten_outputs(result, keys)[0])

    # forward() is generated so that its parameters carry the model's own names (tracing keeps them).
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {', '.join(args)}):\n    return self.flat({', '.join(args)})\n", namespace)
    _Flat.forward = namespace["forward"]
    return _Flat(runner.module).eval()


def _outputs_equal(torch: Any, a: Any, b: Any) -> bool:
    flat_a, flat_b = flatten_outputs(a)[0], flatten_outputs(b)[0]
    return len(flat_a) == len(flat_b) and all(
        torch.is_tensor(x) and torch.is_tensor(y) and x.shape == y.shape and x.dtype == y.dtype
        and torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5, equal_nan=True)
        for x, y in zip(flat_a, flat_b)
    )


@contextlib.contextmanager
def _quiet_export():
    # Tracing and the TorchScript-based ONNX exporter warn about constructs they handle (and about
    # being deprecated); the user asked for an export, not a lecture.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def to_torchscript(runner: TorchRunner, args: tuple[Any, ...]) -> Any:
    """The runner's module as TorchScript: scripted if that works and agrees, else traced."""
    torch = runner._torch
    module = runner.module
    with _quiet_export(), torch.inference_mode(False), torch.no_grad():
        expected = module(*args)
        # Triton's PyTorch backend takes a Tensor or a tuple of Tensors back, never a dict or list.
        needs_wrapper = isinstance(expected, (Mapping, list))
        if not needs_wrapper:
            if isinstance(module, torch.jit.ScriptModule):
                return module
            try:
                scripted = torch.jit.script(module)
                if _outputs_equal(torch, scripted(*args), expected):
                    return scripted
            except Exception:  # noqa: BLE001 - scripting fails on much valid Python; tracing is the fallback
                pass
        try:
            return torch.jit.trace(_wrapper(runner) if needs_wrapper else module, args, check_trace=False)
        except Exception as exc:
            raise ExportError(
                f"the model can be neither scripted nor traced: {type(exc).__name__}: {exc}",
                hint='export it as ONNX instead with write_repository(..., options={"torch_format": "onnx"})',
            ) from exc


def to_onnx(runner: TorchRunner, args: tuple[Any, ...], config: ModelConfig, path: Path) -> None:
    torch = runner._torch
    count = len(runner.input_names)
    input_names = [""] * count
    for name, position in zip(runner.input_names, runner.input_positions):
        input_names[position] = name
    with _quiet_export(), torch.inference_mode(False), torch.no_grad():
        flat = flatten_outputs(runner.module(*args), runner.output_keys)[0]
    output_names = [f"unused_output__{i}" for i in range(len(flat))]
    for name, position in zip(runner.output_names, runner.output_positions):
        output_names[position] = name
    dynamic_axes: dict[str, dict[int, str]] = {}
    batched = config.max_batch_size > 0
    for tensors in (config.input, config.output):
        for tensor in tensors:
            axes = {0: "batch"} if batched else {}
            if not tensor.HasField("reshape"):
                offset = 1 if batched else 0
                axes.update({i + offset: f"{tensor.name}_{i}" for i, d in enumerate(tensor.dims) if d == -1})
            if axes:
                dynamic_axes[tensor.name] = axes
    with _quiet_export(), torch.inference_mode(False), torch.no_grad():
        try:
            torch.onnx.export(
                _wrapper(runner),
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes or None,
                dynamo=False,  # the TorchScript-based exporter needs no onnxscript and keeps dynamic_axes
            )
        except Exception as exc:
            raise ExportError(
                f"exporting the model to ONNX failed: {type(exc).__name__}: {exc}",
                model=config.name,
                hint="export as TorchScript instead (the default), or pass the ONNX file you exported yourself",
            ) from exc


def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    runner = options.get("runner")
    if not isinstance(runner, TorchRunner):
        raise ExportError("this torch model has no runner to export", model=config.name)
    torch_format = options.get("torch_format") or ("onnx" if config.platform == ONNX_PLATFORM else "torchscript")
    if torch_format not in FORMATS:
        raise ConfigError(f"unknown torch_format {torch_format!r}", model=config.name, expected=" or ".join(FORMATS))
    version_dir.mkdir(parents=True, exist_ok=True)
    out = ModelConfig()
    out.CopyFrom(config)
    out.backend = ""
    if torch_format == "torchscript" and runner.source is not None:
        shutil.copyfile(runner.source, version_dir / MODEL_FILE)
        out.platform = PLATFORM
    else:
        args = _export_args(runner, options.get("example"), config)
        if torch_format == "onnx":
            to_onnx(runner, args, add_reshapes(out, runner.input_shapes, runner.output_shapes), version_dir / ONNX_FILE)
            out.platform = ONNX_PLATFORM
        else:
            runner._torch.jit.save(to_torchscript(runner, args), str(version_dir / MODEL_FILE))
            out.platform = PLATFORM
    return add_reshapes(out, runner.input_shapes, runner.output_shapes)


# ----------------------------------------------------------------------------- read
def reads(config: ModelConfig) -> bool:
    return config.platform == PLATFORM or config.backend == "pytorch"


def read(config: ModelConfig, version_dir: Path) -> Adapted:
    torch = _torch()
    path = model_file(config, version_dir, MODEL_FILE, "a PyTorch model")
    wants_gpu = any(g.kind == g.KIND_GPU for g in config.instance_group)
    device = torch.device("cuda") if wants_gpu and torch.cuda.is_available() else torch.device("cpu")
    module = torch.jit.load(str(path), map_location=device).eval()
    forward_args = forward_arguments(module) or []
    input_names = [t.name for t in config.input]
    output_names = [t.name for t in config.output]
    runner = TorchRunner(
        module,
        input_names=input_names,
        input_positions=input_positions(input_names, forward_args),
        output_names=output_names,
        output_positions=output_positions(output_names),
        batched=config.max_batch_size > 0,
        input_shapes=model_shapes(config, "input"),
        output_shapes=model_shapes(config, "output"),
        output_dims={t.name: tuple(t.dims) for t in config.output},
        forward_args=forward_args,
        source=path,
    )
    return Adapted(
        runner=runner,
        inputs=input_specs(config),
        outputs=output_specs(config),
        max_batch_size=config.max_batch_size,
        framework="torch",
        platform=PLATFORM,
        device="gpu" if device.type == "cuda" else "cpu",
    )
