"""Plain Python callables over NumPy (CuPy, cuDF and torch arrays pass through untouched).

In the kernel the live callable runs directly. On disk it becomes a Triton Python-backend model:
``model.py`` (a ``TritonPythonModel`` around :mod:`._python_runtime`, copied in verbatim) plus the
callable serialized with cloudpickle, which also handles functions defined in a notebook. Reading a
repository runs any Python-backend ``model.py`` through a shim of ``triton_python_backend_utils``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import json
import sys
import threading
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from ..config import ModelConfig, input_specs, output_specs
from ..errors import ExportError, InferenceError, SignatureError
from ..tensors import TensorSpec, array_library
from . import _python_runtime
from .base import Adapted, normalize_example, specs_from_arrays, synthesize_example, check_declared

name = "python"
CALLABLE_FILE = "callable.pkl"
SIGNATURE_FILE = "signature.json"


def matches(obj: Any) -> bool:
    return callable(obj) and not isinstance(obj, (str, bytes))


def parameter_names(fn: Any) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    # Parameters with defaults are options (k=3), not tensors, unless an example dict names them.
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.default is inspect.Parameter.empty
    ]


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
    batched = bool(options.pop("batched", True))
    output_names = options.pop("output_names", None) or ([s.name for s in outputs] if outputs else None)
    input_names = options.pop("input_names", None) or ([s.name for s in inputs] if inputs else parameter_names(obj))
    if max_batch_size is None:
        max_batch_size = 64
    batch_dim = max_batch_size > 0
    if example is None:
        if not inputs:
            raise SignatureError(
                "cannot infer the signature of a Python callable without an example",
                model=name,
                hint="pass example={...} (a batch of inputs), or inputs=[TensorSpec(...)] "
                "and outputs=[TensorSpec(...)]",
            )
        if outputs:
            runner = _python_runtime.CallableRunner(
                obj, input_names, [s.name for s in outputs], {s.name: s.dtype for s in outputs}, batched,
                batch_dim=max_batch_size > 0,
            )
            return Adapted(runner=runner, inputs=inputs, outputs=outputs, max_batch_size=max_batch_size, framework="python", backend="python")
        example = synthesize_example(inputs, batched=batch_dim)
    arrays = normalize_example(example, input_names or ["input_0"])
    inferred_inputs = specs_from_arrays(arrays, batched=batch_dim, kind="input", model=name)
    inputs = check_declared(inputs, inferred_inputs, kind="input", model=name)
    input_names = [s.name for s in inputs]
    probe = _python_runtime.CallableRunner(
        obj, input_names, output_names, batched=batched or not batch_dim, batch_dim=batch_dim
    )
    try:
        result = probe(arrays)
    except Exception as exc:  # the user's function: anything can come out
        raise SignatureError(
            f"calling the function on the example failed: {type(exc).__name__}: {exc}",
            model=name,
            hint="check the example's names, shapes and dtypes against the function's parameters",
        ) from exc
    inferred_outputs = specs_from_arrays(result, batched=batch_dim, kind="output", model=name)
    outputs = check_declared(outputs, inferred_outputs, kind="output", model=name)
    _check_batch_preserved(result, arrays, batch_dim, name)
    runner = _python_runtime.CallableRunner(
        obj,
        input_names,
        [s.name for s in outputs],
        {s.name: s.dtype for s in outputs},
        batched=batched or not batch_dim,
        batch_dim=batch_dim,
    )
    device = "gpu" if any(array_library(v) in ("cupy",) or "cuda" in str(getattr(v, "device", "")) for v in result.values()) else "cpu"
    return Adapted(
        runner=runner,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        framework="python",
        backend="python",
        device=device,
    )


def _check_batch_preserved(result: dict[str, Any], arrays: dict[str, Any], batch_dim: bool, model: str) -> None:
    if not batch_dim or not arrays:
        return
    rows = len(next(iter(arrays.values())))
    for key, value in result.items():
        if not getattr(value, "shape", None) or value.shape[0] != rows:
            raise SignatureError(
                "a batched model must return one row per input row",
                model=model,
                tensor=key,
                expected=f"leading dimension {rows}",
                got=f"shape {list(getattr(value, 'shape', []))}",
                hint="return per-row results, or register with max_batch_size=0 if the model does not batch, "
                "or batched=False for a function of one item",
            )


# ----------------------------------------------------------------------------- files
# The request loop of every generated model.py (this backend's and export's portable wrappers):
# merge the requests' tensors, run once, answer each request; a failure fails only its batch.
EXECUTE_SOURCE = '''\
    def execute(self, requests):
        batch = []
        for request in requests:
            tensors = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            batch.append(tensors)
        try:
            results = run_requests(self.runner, batch)
        except Exception as exc:  # one failing batch fails its requests, never the server
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        for request, outputs in zip(requests, results):
            wanted = request.requested_output_names() or list(outputs)
            tensors = [pb_utils.Tensor(name, _host(outputs[name])) for name in wanted if name in outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
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


MODEL_PY_TEMPLATE = '''\
"""Triton Python-backend model written by nbserve for a registered Python callable.

The callable is in {callable_file} (cloudpickle); {signature_file} names its inputs and outputs.
The runtime below is nbserve's own, copied verbatim, so batching matches the notebook exactly.
"""
import json
import os

import triton_python_backend_utils as pb_utils

# ---- nbserve runtime (nbserve/backends/_python_runtime.py) ----
{runtime}
# ---- end of runtime ----


class TritonPythonModel:
    def initialize(self, args):
        import cloudpickle

        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "{callable_file}"), "rb") as f:
            fn = cloudpickle.load(f)
        with open(os.path.join(here, "{signature_file}")) as f:
            signature = json.load(f)
        self.input_names = signature["inputs"]
        self.runner = CallableRunner(
            fn,
            signature["inputs"],
            signature["outputs"],
            signature["output_dtypes"],
            batched=signature["batched"],
            keyword=signature["keyword"],
            batch_dim=signature["batch_dim"],
        )

{execute}'''


def model_py_source() -> str:
    runtime = Path(_python_runtime.__file__).read_text()
    return MODEL_PY_TEMPLATE.format(
        runtime=runtime, callable_file=CALLABLE_FILE, signature_file=SIGNATURE_FILE, execute=EXECUTE_SOURCE
    )


def _is_installed(module_name: str) -> bool:
    """True for the standard library and installed distributions (importable wherever Triton runs)."""
    top = module_name.split(".")[0]
    return top in sys.stdlib_module_names or top in _distribution_packages()


@functools.lru_cache(maxsize=1)
def _distribution_packages() -> frozenset[str]:
    # Scanning every installed distribution takes seconds: once per process is enough.
    import importlib.metadata

    return frozenset(importlib.metadata.packages_distributions())


@contextlib.contextmanager
def _pickled_by_value(fn: Any, cloudpickle: Any):
    """Pickle the callable's own module by value when it is a local file (a test, a helper module
    next to the notebook): a Triton container or a child process could not import it by name."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    local = module is not None and module.__name__ != "__main__" and not _is_installed(module.__name__)
    if local:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        if local:
            cloudpickle.unregister_pickle_by_value(module)


def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    import cloudpickle

    runner = options.get("runner")
    batched = getattr(runner, "batched", True)
    keyword = getattr(runner, "keyword", None)
    version_dir.mkdir(parents=True, exist_ok=True)
    fn = getattr(runner, "fn", obj)
    try:
        with _pickled_by_value(fn, cloudpickle):
            payload = cloudpickle.dumps(fn)
    except Exception as exc:  # whatever the callable holds on to: locks, sockets, open files...
        raise ExportError(
            f"the callable cannot be serialized with cloudpickle: {type(exc).__name__}: {exc}",
            model=config.name,
            hint="create locks, open files, sockets and clients inside the function (or on its first call), "
            "not in variables it closes over",
        ) from exc
    (version_dir / CALLABLE_FILE).write_bytes(payload)
    signature = {
        "inputs": [t.name for t in config.input],
        "outputs": [t.name for t in config.output],
        "output_dtypes": {s.name: s.dtype for s in output_specs(config)},
        "batched": batched,
        "batch_dim": config.max_batch_size > 0,
        "keyword": _python_runtime.accepts_keywords(obj, [t.name for t in config.input]) if keyword is None else keyword,
    }
    (version_dir / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2))
    (version_dir / "model.py").write_text(model_py_source())
    out = ModelConfig()
    out.CopyFrom(config)
    out.platform = ""
    out.backend = "python"
    return out


def reads(config: ModelConfig) -> bool:
    return config.backend == "python"


# ----------------------------------------------------------------------------- reading model.py
_IMPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def _backend_utils_available():
    """Make ``import triton_python_backend_utils`` work while a model file is imported."""
    if "triton_python_backend_utils" in sys.modules:
        yield
        return
    from . import _triton_shim

    sys.modules["triton_python_backend_utils"] = _triton_shim
    try:
        yield
    finally:
        # Model files bind the module at import time, so removing it afterwards is safe.
        sys.modules.pop("triton_python_backend_utils", None)


def _config_json(config: ModelConfig) -> str:
    data = json_format.MessageToDict(config, preserving_proto_field_name=True)

    # Triton hands int64 fields (dims) to model.py as numbers; protobuf's JSON makes them strings.
    def numbers(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        return value

    for kind in ("input", "output"):
        for tensor in data.get(kind, []):
            tensor["dims"] = numbers(tensor.get("dims", []))
    return json.dumps(data)


def load_python_model(config: ModelConfig, version_dir: Path) -> Any:
    """Import ``model.py`` and call ``initialize`` the way Triton's Python backend does."""
    model_file = version_dir / "model.py"
    if not model_file.is_file():
        raise SignatureError(
            "a Python-backend model needs a model.py in its version folder",
            model=config.name,
            got=f"no {model_file}",
            hint="write model.py with a TritonPythonModel class",
        )
    module_name = f"nbserve_model_{config.name}_{version_dir.name}_{id(config)}"
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    module = importlib.util.module_from_spec(spec)
    with _IMPORT_LOCK, _backend_utils_available():
        sys.path.insert(0, str(version_dir))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(version_dir))
    instance = module.TritonPythonModel()
    if hasattr(instance, "initialize"):
        kind = "GPU" if any(g.kind == g.KIND_GPU for g in config.instance_group) else "CPU"
        instance.initialize(
            {
                "model_config": _config_json(config),
                "model_instance_kind": kind,
                "model_instance_name": f"{config.name}_0",
                "model_instance_device_id": "0",
                "model_repository": str(version_dir.parent),
                "model_version": version_dir.name,
                "model_name": config.name,
            }
        )
    return instance


class PythonModelRunner:
    """Runs a loaded ``TritonPythonModel``: the whole batch goes in as one request."""

    def __init__(self, instance: Any, config: ModelConfig) -> None:
        from . import _triton_shim as shim

        self._shim = shim
        self.instance = instance
        self.model = config.name
        self.output_names = [t.name for t in config.output]

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        shim = self._shim
        request = shim.InferenceRequest(
            inputs=[shim.Tensor(k, v) for k, v in inputs.items()],
            requested_output_names=self.output_names,
            model_name=self.model,
        )
        responses = self.instance.execute([request])
        if not responses or len(responses) != 1:
            raise InferenceError(
                "execute() must return one response per request",
                model=self.model,
                expected=1,
                got=len(responses or []),
            )
        response = responses[0]
        error = response.error() if hasattr(response, "error") else None
        if error is not None:
            message = error.message() if hasattr(error, "message") else str(error)
            raise InferenceError(f"the model returned an error: {message}", model=self.model)
        return {t.name(): getattr(t, "array", None) if getattr(t, "array", None) is not None else t.as_numpy()
                for t in response.output_tensors()}

    def close(self) -> None:
        if hasattr(self.instance, "finalize"):
            self.instance.finalize()


def read(config: ModelConfig, version_dir: Path) -> Adapted:
    instance = load_python_model(config, version_dir)
    runner = PythonModelRunner(instance, config)
    return Adapted(
        runner=runner,
        inputs=input_specs(config),
        outputs=output_specs(config),
        max_batch_size=config.max_batch_size,
        framework="python",
        backend="python",
        close=runner.close,
    )
