"""Tree ensembles (XGBoost, LightGBM, scikit-learn forests) through Treelite, for Triton's FIL backend.

Every source is converted to a Treelite model once, at registration. In the kernel it runs with
Treelite's GTIL on the CPU, or with cuML's FIL when cuML is installed and a GPU is present. On disk
it is a FIL-backend model: XGBoost as ``xgboost.json``, LightGBM as ``model.txt`` and scikit-learn as
a Treelite ``checkpoint.tl``, with ``backend: "fil"`` and FIL's ``model_type``, ``output_class``,
``predict_proba`` and ``threshold`` parameters. The same :class:`FilHead` turns the raw forest output
into what those parameters promise, in the kernel and when a written model is read back, so both
runs match the framework's own ``predict`` / ``predict_proba``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, input_specs, output_specs
from ..errors import ConfigError, ExportError, SignatureError, require
from ..tensors import TensorSpec, to_numpy
from .base import Adapted, check_declared, module_names, normalize_example

name = "trees"

# Triton's FIL backend reads only these tensor names (docs/model_config.md in fil_backend).
INPUT_NAME = "input__0"
OUTPUT_NAME = "output__0"
# FIL's default file name for each model_type.
MODEL_FILES = {
    "xgboost_json": "xgboost.json",
    "xgboost_ubj": "xgboost.ubj",
    "xgboost": "xgboost.model",
    "lightgbm": "model.txt",
    "treelite_checkpoint": "checkpoint.tl",
}
# What each source is written as.
WRITTEN_TYPE = {"xgboost": "xgboost_json", "lightgbm": "lightgbm", "sklearn": "treelite_checkpoint"}

_SKLEARN_MODELS = {
    "RandomForestRegressor",
    "RandomForestClassifier",
    "GradientBoostingRegressor",
    "GradientBoostingClassifier",
    "ExtraTreesRegressor",
    "ExtraTreesClassifier",
}


def _source(obj: Any) -> str | None:
    """"xgboost", "lightgbm" or "sklearn" from the type's MRO names, importing nothing."""
    for full in module_names(obj):
        module, _, cls = full.rpartition(".")
        if full in ("xgboost.core.Booster", "xgboost.sklearn.XGBModel"):
            return "xgboost"
        if full in ("lightgbm.basic.Booster", "lightgbm.sklearn.LGBMModel"):
            return "lightgbm"
        if module.startswith("sklearn.ensemble") and cls in _SKLEARN_MODELS:
            return "sklearn"
    return None


def matches(obj: Any) -> bool:
    return not isinstance(obj, type) and _source(obj) is not None


def _is_booster(obj: Any) -> bool:
    return any(n in ("xgboost.core.Booster", "lightgbm.basic.Booster") for n in module_names(obj))


# ----------------------------------------------------------------------------- FIL output semantics
@dataclasses.dataclass(frozen=True, kw_only=True)
class FilHead:
    """What FIL returns for a forest, from its ``output_class``/``predict_proba``/``threshold``.

    ``output_class`` false: the forest's output after its own transform (a regression value, a
    sigmoid probability). ``output_class`` with ``predict_proba``: one probability per class; a
    binary forest with one output becomes ``[1 - p, p]``. ``output_class`` alone: the class index,
    ``p > threshold`` for binary forests (``p`` of the positive class) and the arg-max otherwise.
    """

    output_class: bool
    predict_proba: bool
    threshold: float = 0.5
    width: int = 1  # dims of output__0
    binary: bool = False  # two classes: the threshold applies

    def finish(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float32).reshape(raw.shape[0], -1)
        if not self.output_class:
            return raw
        if self.predict_proba:
            return np.concatenate([1.0 - raw, raw], axis=1) if raw.shape[1] == 1 and self.width == 2 else raw
        if raw.shape[1] <= 2:  # binary: one probability, or scikit-learn's two
            return (raw[:, -1:] > self.threshold).astype(np.float32)
        return raw.argmax(axis=1).astype(np.float32)[:, None]

    def parameters(self) -> dict[str, str]:
        params = {"output_class": _flag(self.output_class)}
        if self.output_class:
            params["predict_proba"] = _flag(self.predict_proba)
            if not self.predict_proba and self.binary:
                params["threshold"] = repr(float(self.threshold))
        return params

    @classmethod
    def from_parameters(cls, params: dict[str, str], width: int) -> FilHead:
        # FIL treats a missing output_class as a classifier (its qa tests do the same).
        return cls(
            output_class=params.get("output_class", "true").lower() == "true",
            predict_proba=params.get("predict_proba", "false").lower() == "true",
            threshold=float(params.get("threshold", "0.5")),
            width=width,
            binary="threshold" in params,
        )


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _head(
    obj: Any, source: str, raw_width: int, predict_proba: bool | None, threshold: float | None, model: str
) -> FilHead:
    classifier = not _is_booster(obj) and callable(getattr(obj, "predict_proba", None))
    if not classifier:
        if predict_proba is not None or threshold is not None:
            raise SignatureError(
                "predict_proba and threshold apply to classifiers only",
                model=model,
                got=type(obj).__name__,
                hint="drop predict_proba=/threshold=, or register the classifier (e.g. XGBClassifier)",
            )
        if source == "xgboost" and _is_booster(obj) and _xgboost_objective(obj) == "multi:softmax":
            # Booster.predict gives class indices for softmax, while the forest itself gives scores.
            return FilHead(output_class=True, predict_proba=False, width=1)
        if raw_width > 1:
            return FilHead(output_class=True, predict_proba=True, width=raw_width)
        return FilHead(output_class=False, predict_proba=False, width=1)
    n_classes = len(getattr(obj, "classes_", ())) or raw_width
    if predict_proba is False:
        binary = n_classes <= 2
        if threshold is not None and not binary:
            raise SignatureError(
                "threshold applies to binary classifiers only",
                model=model,
                got=f"{n_classes} classes",
                hint="drop threshold=; multi-class models return the most probable class",
            )
        return FilHead(
            output_class=True,
            predict_proba=False,
            width=1,
            threshold=0.5 if threshold is None else float(threshold),
            binary=binary,
        )
    if threshold is not None:
        raise SignatureError(
            "threshold applies only when the classifier returns class indices",
            model=model,
            hint="pass predict_proba=False with threshold=..., or drop threshold=",
        )
    return FilHead(output_class=True, predict_proba=True, width=max(n_classes, raw_width))


def _xgboost_objective(booster: Any) -> str:
    try:
        return json.loads(booster.save_config())["learner"]["objective"]["name"]
    except (KeyError, ValueError):
        return ""


# ----------------------------------------------------------------------------- conversion
def _xgboost_booster(obj: Any) -> Any:
    return obj if _is_booster(obj) else obj.get_booster()


def _lightgbm_booster(obj: Any) -> Any:
    return obj if _is_booster(obj) else obj.booster_


def _to_treelite(obj: Any, source: str, model: str) -> Any:
    treelite = require("treelite", "trees", purpose="serving tree models")
    try:
        if source == "xgboost":
            return treelite.frontend.from_xgboost(_xgboost_booster(obj))
        if source == "lightgbm":
            return treelite.frontend.from_lightgbm(_lightgbm_booster(obj))
        import treelite.sklearn

        return treelite.sklearn.import_model(obj)
    except Exception as exc:  # unfitted models and unsupported options surface here, in each framework's words
        raise SignatureError(
            f"Treelite cannot convert this {type(obj).__name__}: {type(exc).__name__}: {exc}",
            model=model,
            hint="fit the model first; Treelite converts fitted XGBoost, LightGBM and scikit-learn forests",
        ) from exc


class TreeRunner:
    """Runs a Treelite model on a batch of ``input__0`` rows and applies the FIL head."""

    def __init__(
        self,
        model: Any,
        head: FilHead,
        *,
        input_name: str = INPUT_NAME,
        output_name: str = OUTPUT_NAME,
        batch_dim: bool = True,
        source_file: Path | None = None,
    ) -> None:
        self.model = model  # the Treelite model; write() serializes it for scikit-learn sources
        self.head = head
        self.input_name = input_name
        self.output_name = output_name
        self.batch_dim = batch_dim
        self.source_file = source_file  # the file read from a repository, copied as-is on re-export
        self._predict, self.device = _gpu_predictor(model) or (self._gtil, "cpu")

    def _gtil(self, rows: np.ndarray) -> np.ndarray:
        import treelite.gtil

        return treelite.gtil.predict(self.model, rows)

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        rows = to_numpy(inputs[self.input_name])
        rows = np.ascontiguousarray(rows.reshape(-1, rows.shape[-1]) if self.batch_dim else rows.reshape(1, -1))
        out = self.head.finish(to_numpy(self._predict(rows)))
        return {self.output_name: out if self.batch_dim else out[0]}


def _gpu_predictor(model: Any) -> tuple[Any, str] | None:
    """cuML FIL on the GPU when cuML and a GPU are present; None otherwise."""
    if importlib.util.find_spec("cuml") is None:
        return None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        from cuml.fil import ForestInference

        # Not a classifier: predict() returns the forest's transformed output, which FilHead finishes
        # exactly as it does GTIL's, so CPU and GPU runs agree.
        fil = ForestInference.load_from_treelite_model(model, is_classifier=False, precision="single")
    except Exception as exc:  # a cuML/driver mismatch must not stop serving: GTIL still runs
        warnings.warn(
            f"cuML FIL could not load the model ({type(exc).__name__}: {exc}); using Treelite GTIL on the CPU",
            stacklevel=2,
        )
        return None
    return fil.predict, "gpu"


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
    input_names = options.pop("input_names", None) or [INPUT_NAME]
    output_names = options.pop("output_names", None) or [OUTPUT_NAME]
    predict_proba = options.pop("predict_proba", None)
    threshold = options.pop("threshold", None)
    if len(input_names) != 1 or len(output_names) != 1:
        raise SignatureError(
            "a tree model has one input (the feature rows) and one output",
            model=name,
            got=f"inputs {input_names}, outputs {output_names}",
            hint=f'pass one name each, e.g. inputs=["{INPUT_NAME}"], outputs=["{OUTPUT_NAME}"]',
        )
    source = _source(obj)
    if source is None:
        raise SignatureError(
            f"the trees backend cannot serve a {type(obj).__name__}",
            model=name,
            expected="an XGBoost or LightGBM Booster/estimator, or a scikit-learn random forest, "
            "extra-trees or gradient-boosting model",
        )
    model = _to_treelite(obj, source, name)
    n_features = int(model.num_feature)
    import treelite.gtil

    probe = treelite.gtil.predict(model, np.zeros((1, n_features), dtype=np.float32))
    if probe.ndim == 3 and probe.shape[1] != 1:
        raise SignatureError(
            "multi-output tree models are not supported by Triton's FIL backend",
            model=name,
            got=f"{probe.shape[1]} targets",
            hint="register one model per target",
        )
    head = _head(obj, source, int(probe.reshape(1, -1).shape[1]), predict_proba, threshold, name)
    if max_batch_size is None:
        max_batch_size = 64
    batch_dim = max_batch_size > 0
    if example is not None:
        _check_example(example, input_names[0], n_features, batch_dim, name)
    inferred_in = [TensorSpec(input_names[0], (n_features,), "FP32")]
    inferred_out = [TensorSpec(output_names[0], (head.width,), "FP32")]
    inputs = check_declared(inputs, inferred_in, kind="input", model=name)
    outputs = check_declared(outputs, inferred_out, kind="output", model=name)
    runner = TreeRunner(
        model, head, input_name=inputs[0].name, output_name=outputs[0].name, batch_dim=batch_dim
    )
    return Adapted(
        runner=runner,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        framework=source,
        backend="fil",
        parameters={"model_type": WRITTEN_TYPE[source], **head.parameters()},
        device=runner.device,
    )


def _check_example(example: Any, input_name: str, n_features: int, batch_dim: bool, model: str) -> None:
    array = normalize_example(example, [input_name]).get(input_name)
    shape = tuple(getattr(array, "shape", ()))
    expected = 2 if batch_dim else 1
    if len(shape) != expected or shape[-1] != n_features:
        raise SignatureError(
            "the example does not match the model's features",
            model=model,
            tensor=input_name,
            expected=f"shape [{'batch, ' if batch_dim else ''}{n_features}]",
            got=list(shape),
            hint="pass rows of the training features, or leave example= out (trees need none)",
        )


# ----------------------------------------------------------------------------- files
def _parameters(config: ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    names = ([t.name for t in config.input], [t.name for t in config.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(
            "Triton's FIL backend reads only input__0 and writes only output__0",
            model=config.name,
            got=f"inputs {names[0]}, outputs {names[1]}",
            hint="register the tree model without renaming its tensors; rename them in an ensemble instead",
        )
    runner = options.get("runner")
    out = ModelConfig()
    out.CopyFrom(config)
    out.platform = ""
    out.backend = "fil"
    model_type = _parameters(config).get("model_type", "")
    version_dir.mkdir(parents=True, exist_ok=True)
    source_file = getattr(runner, "source_file", None)
    if obj is None and source_file is not None and model_type in MODEL_FILES:
        # Read from a repository: the file that was read is the model, whatever its format.
        shutil.copyfile(source_file, version_dir / (config.default_model_filename or MODEL_FILES[model_type]))
        return out
    out.default_model_filename = ""
    if obj is not None and model_type == "xgboost_json":
        _xgboost_booster(obj).save_model(str(version_dir / MODEL_FILES[model_type]))
    elif obj is not None and model_type == "lightgbm":
        _lightgbm_booster(obj).save_model(str(version_dir / MODEL_FILES[model_type]))
    else:
        model = getattr(runner, "model", None)
        if model is None:
            model = _to_treelite(obj, _source(obj) or "sklearn", config.name)
        model_type = "treelite_checkpoint"
        model.serialize(str(version_dir / MODEL_FILES[model_type]))
    out.parameters["model_type"].string_value = model_type
    return out


def reads(config: ModelConfig) -> bool:
    return config.backend == "fil"


def _load(model_type: str, path: Path, params: dict[str, str], model: str) -> Any:
    treelite = require("treelite", "trees", purpose="reading FIL models")
    allow_unknown = params.get("xgboost_allow_unknown_field", "false").lower() == "true"
    try:
        if model_type in ("xgboost_json", "xgboost_ubj"):
            choice = "json" if model_type == "xgboost_json" else "ubjson"
            return treelite.frontend.load_xgboost_model(path, format_choice=choice, allow_unknown_field=allow_unknown)
        if model_type == "xgboost":
            return treelite.frontend.load_xgboost_model_legacy_binary(path)
        if model_type == "lightgbm":
            return treelite.frontend.load_lightgbm_model(path)
        return treelite.Model.deserialize(str(path))
    except Exception as exc:  # a corrupt or mislabelled file: say which one
        raise ConfigError(
            f"Treelite cannot load {path.name} as {model_type}: {type(exc).__name__}: {exc}",
            model=model,
            got=str(path),
            hint="check the model_type parameter against the file's format",
        ) from exc


def read(config: ModelConfig, version_dir: Path) -> Adapted:
    params = _parameters(config)
    model_type = params.get("model_type", "xgboost")  # FIL's default
    if model_type not in MODEL_FILES:
        raise ConfigError(
            "unknown FIL model_type",
            model=config.name,
            expected=", ".join(MODEL_FILES),
            got=model_type,
            hint='set parameters { key: "model_type" value: { string_value: "xgboost_json" } }',
        )
    path = version_dir / (config.default_model_filename or MODEL_FILES[model_type])
    if not path.is_file():
        raise ConfigError(
            "the FIL model file is missing",
            model=config.name,
            expected=str(path),
            got=sorted(p.name for p in version_dir.iterdir()) if version_dir.is_dir() else "no version folder",
            hint=f"save the model as {MODEL_FILES[model_type]}, or set default_model_filename",
        )
    inputs, outputs = input_specs(config), output_specs(config)
    if len(inputs) != 1 or len(outputs) < 1:
        raise ConfigError(
            "a FIL model has one input and one output",
            model=config.name,
            got=f"{len(inputs)} inputs, {len(outputs)} outputs",
            hint=f"declare {INPUT_NAME} and {OUTPUT_NAME}",
        )
    model = _load(model_type, path, params, config.name)
    width = int(np.prod(outputs[0].dims)) if all(d > 0 for d in outputs[0].dims) else 1
    head = FilHead.from_parameters(params, width)
    runner = TreeRunner(
        model,
        head,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        batch_dim=config.max_batch_size > 0,
        source_file=path,
    )
    framework = {"lightgbm": "lightgbm", "treelite_checkpoint": "treelite"}.get(model_type, "xgboost")
    return Adapted(
        runner=runner,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=config.max_batch_size,
        framework=framework,
        backend="fil",
        parameters=params,
        device=runner.device,
    )
