"""The portable variant: native model folders rewritten as Python-backend models around the same files.

:func:`make_portable` turns one written model folder (``onnxruntime_onnx``, ``pytorch_libtorch`` or
``fil``) into a Python-backend model: the native files stay where the framework's writer put them
(``model.onnx``, ``model.pt``, ``xgboost.json``...), and next to them go a ``model.py`` that loads
them with ONNX Runtime, torch or Treelite, and the native config as JSON. Triton builds without the
native backend (like the tritonserver in nvidia-pytriton) then serve them with the same batching,
instances and tensors. TensorRT plans and Python models stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ModelConfig, parse, render, validate
from ..errors import ExportError
from . import _portable_runtime

__all__ = ["FRAMEWORKS", "native_framework", "make_portable", "model_py_source", "SIDECAR_FILE"]

SIDECAR_FILE = _portable_runtime.SIDECAR_FILE

# framework -> (what it is called in messages, the package model.py imports, the default model file)
FRAMEWORKS = {
    "onnxruntime": ("ONNX Runtime", "onnxruntime", "model.onnx"),
    "pytorch": ("TorchScript", "torch", "model.pt"),
    "fil": ("Treelite (FIL)", "treelite", None),  # the file follows model_type
}
# Backend parameters that only the native backend reads; the Python model gets them in the sidecar.
_NATIVE_PARAMETERS = {
    "fil": {"model_type", "output_class", "predict_proba", "threshold", "storage_type", "algo", "blocks_per_sm",
            "threads_per_tree", "transfer_threshold", "use_experimental_optimizations",
            "xgboost_allow_unknown_field"},
}

MODEL_PY_TEMPLATE = '''\
"""Triton Python-backend model written by nbserve.export(portable=True).

It serves {model_file} with {what}, as Triton's native "{framework}" backend would, for Triton
builds without that backend. The native config is in {sidecar} next to this file; the runtimes
below are nbserve's own, copied verbatim, so batching matches the notebook exactly.
"""
import json
import os

import triton_python_backend_utils as pb_utils

# ---- nbserve runtime (nbserve/backends/_python_runtime.py) ----
{python_runtime}
# ---- nbserve portable runtime (nbserve/export/_portable_runtime.py) ----
{portable_runtime}
# ---- end of runtimes ----


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "{sidecar}")) as f:
            native = json.load(f)
        self.input_names = [t["name"] for t in native["input"]]
        self.runner = load_portable(native, here, args.get("model_instance_kind", "CPU"),
                                    args.get("model_instance_device_id", "0"))

{execute}'''


def native_framework(config: ModelConfig) -> str | None:
    """"onnxruntime", "pytorch" or "fil" for a config the portable variant rewrites; None otherwise."""
    if config.platform == "onnxruntime_onnx" or config.backend == "onnxruntime":
        return "onnxruntime"
    if config.platform == "pytorch_libtorch" or config.backend == "pytorch":
        return "pytorch"
    if config.backend == "fil":
        return "fil"
    return None


def model_py_source(framework: str, model_file: str) -> str:
    """The portable ``model.py`` for a model of ``framework`` stored in ``model_file``."""
    from ..backends import _python_runtime
    from ..backends.python import EXECUTE_SOURCE

    what, _, _ = FRAMEWORKS[framework]
    return MODEL_PY_TEMPLATE.format(
        model_file=model_file,
        what=what,
        framework=framework,
        sidecar=SIDECAR_FILE,
        python_runtime=Path(_python_runtime.__file__).read_text(),
        portable_runtime=Path(_portable_runtime.__file__).read_text(),
        execute=EXECUTE_SOURCE,
    )


def _model_file(config: ModelConfig, framework: str) -> str:
    if config.default_model_filename:
        return config.default_model_filename
    if framework == "fil":
        params = {k: v.string_value for k, v in config.parameters.items()}
        model_type = params.get("model_type", "xgboost")
        if model_type not in _portable_runtime.FIL_MODEL_FILES:
            raise ExportError(
                "unknown FIL model_type",
                model=config.name,
                expected=", ".join(_portable_runtime.FIL_MODEL_FILES),
                got=model_type,
                hint='set parameters { key: "model_type" value: { string_value: "xgboost_json" } }',
            )
        return _portable_runtime.FIL_MODEL_FILES[model_type]
    return FRAMEWORKS[framework][2]


def _tensor_json(tensor: Any) -> dict[str, Any]:
    from .._proto import model_config_pb2

    data = {"name": tensor.name, "data_type": model_config_pb2().DataType.Name(tensor.data_type),
            "dims": [int(d) for d in tensor.dims]}
    if tensor.HasField("reshape"):
        data["reshape"] = [int(d) for d in tensor.reshape.shape]
    return data


def sidecar(config: ModelConfig, framework: str, model_file: str) -> dict[str, Any]:
    """The native config as the portable runtime reads it."""
    return {
        "framework": framework,
        "model_file": model_file,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": int(config.max_batch_size),
        "input": [_tensor_json(t) for t in config.input],
        "output": [_tensor_json(t) for t in config.output],
        "parameters": {k: v.string_value for k, v in sorted(config.parameters.items())},
    }


def portable_config(config: ModelConfig, framework: str) -> ModelConfig:
    """The Python-backend config: same tensors (reshape applied inside model.py), batching and instances."""
    out = ModelConfig()
    out.CopyFrom(config)
    out.platform, out.backend = "", "python"
    out.ClearField("default_model_filename")  # the Python backend would look for that file as model.py
    for tensor in (*out.input, *out.output):
        tensor.ClearField("reshape")
    for key in _NATIVE_PARAMETERS.get(framework, ()):
        if key in out.parameters:
            del out.parameters[key]
    return validate(out)


def version_folders(model_dir: Path) -> list[Path]:
    """Numeric version folders, as Triton reads them (names starting with 0 are ignored)."""
    return sorted((p for p in model_dir.iterdir()
                   if p.is_dir() and p.name.isascii() and p.name.isdigit() and not p.name.startswith("0")),
                  key=lambda p: int(p.name))


def make_portable(model_dir: Path) -> str | None:
    """Rewrite one written model folder as a portable Python-backend model, in place.

    Args:
        model_dir: a model folder (``config.pbtxt`` and version folders) inside a repository being built.

    Returns:
        The native framework that was wrapped ("onnxruntime", "pytorch", "fil"), or None when the
        model is left as it is (Python models, ensembles, TensorRT plans).

    Raises:
        ExportError: a version folder lacks the model file its config names.
    """
    config_file = model_dir / "config.pbtxt"
    config = parse(config_file.read_text(), path=str(config_file))
    framework = native_framework(config)
    if framework is None:
        return None
    model_file = _model_file(config, framework)
    native = sidecar(config, framework, model_file)
    source = model_py_source(framework, model_file)
    for version_dir in version_folders(model_dir):
        if not (version_dir / model_file).exists():
            raise ExportError(
                "the model file is missing, so no portable model can wrap it",
                model=config.name,
                version=version_dir.name,
                expected=str(version_dir / model_file),
                got=sorted(p.name for p in version_dir.iterdir()),
                hint="write the model with nbserve.export or put the file there",
            )
        if model_file == "model.py":
            raise ExportError("a native model file cannot be called model.py in a portable export",
                              model=config.name, hint="rename default_model_filename")
        (version_dir / SIDECAR_FILE).write_text(json.dumps(native, indent=2) + "\n")
        (version_dir / "model.py").write_text(source)
    config_file.write_text(render(portable_config(config, framework)))
    return framework
