"""``nbserve validate REPO``: lint any Triton model repository, ours or hand-written.

Every finding is an :class:`Issue` that points at the file (and line, where there is one), names the
model and the config field, says what is wrong and how to fix it::

    repo/scorer/config.pbtxt:7: error: model 'scorer' input 'x' dims: the ONNX graph has rank 2 ...

What is checked, model by model and then across the repository:

* the folder: ``config.pbtxt`` present, parsing with Triton's own proto (errors with line numbers),
  ``name`` matching the folder, numeric version folders, a ``version_policy`` that selects one;
* the config: platform/backend known and consistent, tensors with names, data types and valid
  dims, ``reshape`` keeping the element count, batching settings (``dynamic_batching`` needs
  ``max_batch_size``, preferred sizes within it, priority levels);
* the files each backend loads in each version folder (``model.onnx``, ``model.pt``, ``model.plan``,
  ``model.py``, FIL's file per ``model_type``), and a folder holding another backend's file;
* inside the files, when the framework is installed here: the ONNX graph's tensor names, ranks,
  fixed dims, batch dimension and data types; TorchScript ``forward()`` arguments against the
  PyTorch backend's naming rules (``INPUT__0``); FIL's parameters and the forest's feature and class
  counts; ``model.py`` syntax and its ``TritonPythonModel.execute``;
* ensembles: steps naming models of the repository, input/output maps naming real tensors, every
  consumed tensor produced once, outputs produced, no cycles, matching data types and dims, and
  ``max_batch_size`` no larger than each step's.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import html
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from .._proto import model_config_pb2
from ..config import ModelConfig
from ..errors import ConfigError

__all__ = ["Issue", "ValidationReport", "validate"]

ERROR, WARNING = "error", "warning"

PLATFORM_BACKENDS = {
    "tensorrt_plan": "tensorrt",
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
KNOWN_BACKENDS = {"python", "onnxruntime", "pytorch", "tensorrt", "tensorflow", "fil", "openvino", "dali",
                  "identity", "repeat", "square", "vllm", "tensorrtllm"}
# Default model file per platform/backend (Triton's docs).
DEFAULT_FILES = {
    "tensorrt_plan": "model.plan",
    "onnxruntime_onnx": "model.onnx",
    "pytorch_libtorch": "model.pt",
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_graphdef": "model.graphdef",
    "python": "model.py",
    "openvino": "model.xml",
}
# A model file found in a version folder -> the setting that loads it.
FILE_SETTINGS = {
    "model.onnx": 'platform: "onnxruntime_onnx"',
    "model.pt": 'platform: "pytorch_libtorch"',
    "model.plan": 'platform: "tensorrt_plan"',
    "model.savedmodel": 'platform: "tensorflow_savedmodel"',
    "model.graphdef": 'platform: "tensorflow_graphdef"',
    "model.py": 'backend: "python"',
    "xgboost.json": 'backend: "fil" (model_type "xgboost_json")',
    "xgboost.ubj": 'backend: "fil" (model_type "xgboost_ubj")',
    "xgboost.model": 'backend: "fil" (model_type "xgboost")',
    "model.txt": 'backend: "fil" (model_type "lightgbm")',
    "checkpoint.tl": 'backend: "fil" (model_type "treelite_checkpoint")',
}
FIL_MODEL_FILES = {
    "xgboost_json": "xgboost.json",
    "xgboost_ubj": "xgboost.ubj",
    "xgboost": "xgboost.model",
    "lightgbm": "model.txt",
    "treelite_checkpoint": "checkpoint.tl",
}
FIL_CHOICES = {
    "storage_type": ("AUTO", "DENSE", "SPARSE", "SPARSE8"),
    "algo": ("ALGO_AUTO", "NAIVE", "TREE_REORG", "BATCH_TREE_REORG"),
}
FIL_FLAGS = ("output_class", "predict_proba", "use_experimental_optimizations", "xgboost_allow_unknown_field")
FIL_INTEGERS = ("threads_per_tree", "blocks_per_sm", "transfer_threshold")
# Files nbserve writes at the root of a repository, next to the model folders.
REPOSITORY_FILES = {"README.md", "kserve.yaml", ".nbserve-repository"}


@dataclasses.dataclass(frozen=True)
class Issue:
    """One finding: where (file, line, model, field), what is wrong and how to fix it."""

    severity: str  # "error" (Triton would refuse it or it would fail) or "warning"
    code: str  # a short stable identifier, e.g. "dims-mismatch"
    path: str  # the file or folder, relative to the repository's parent
    message: str
    fix: str = ""
    model: str | None = None
    field: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        subject = " ".join(p for p in (f"model '{self.model}'" if self.model else "", self.field or "") if p)
        text = f"{where}: {self.severity}: {subject + ': ' if subject else ''}{self.message.rstrip('.')}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


@dataclasses.dataclass
class ValidationReport:
    """What :func:`validate` found; ``ok`` when there is no error (warnings allowed)."""

    repository: Path
    models: list[str]
    issues: list[Issue]

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == ERROR]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self) -> list[str]:
        return [i.code for i in self.issues]

    def summary(self) -> str:
        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        verdict = "OK" if self.ok else "FAILED"
        return (f"{verdict}: {plural(len(self.errors), 'error')}, {plural(len(self.warnings), 'warning')} "
                f"in {plural(len(self.models), 'model')} ({self.repository})")

    def raise_for_errors(self) -> ValidationReport:
        """Raise ConfigError listing the errors; return the report when there are none."""
        if self.errors:
            raise ConfigError(
                "the repository does not validate:\n" + "\n".join(str(i) for i in self.errors),
                hint="fix each error at the file and field it names, then run nbserve validate again",
            )
        return self

    def __str__(self) -> str:
        return "\n".join([*(str(i) for i in self.issues), self.summary()])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = {"error": "#b00020", "warning": "#8a6d00"}
        rows = "".join(
            f"<tr><td style='color:{colour[i.severity]}'>{i.severity}</td>"
            f"<td><code>{html.escape(i.path)}{':' + str(i.line) if i.line else ''}</code></td>"
            f"<td>{html.escape(i.model or '')}</td><td>{html.escape(i.field or '')}</td>"
            f"<td>{html.escape(i.message)}</td><td>{html.escape(i.fix)}</td></tr>"
            for i in self.issues
        )
        table = ("<table><thead><tr><th></th><th>where</th><th>model</th><th>field</th><th>problem</th>"
                 f"<th>fix</th></tr></thead><tbody>{rows}</tbody></table>") if self.issues else ""
        return f"<div class='nbserve-validate'><b>{html.escape(self.summary())}</b>{table}</div>"


def validate(path: str | os.PathLike[str]) -> ValidationReport:
    """Lint a Triton model repository: every problem with the file, line, field and fix.

    Args:
        path: the repository folder (the one given to ``tritonserver --model-repository``).

    Returns:
        A :class:`ValidationReport`; ``report.ok`` is False when Triton would refuse a model.

    >>> import tempfile, pathlib
    >>> repo = pathlib.Path(tempfile.mkdtemp())
    >>> (repo / "m").mkdir()
    >>> _ = (repo / "m" / "config.pbtxt").write_text(
    ...     'backend: "python"\\nmax_batch_size: 0\\noutput [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]\\n')
    >>> report = validate(repo)
    >>> report.ok, report.errors[0].code, report.errors[0].message
    (False, 'no-version', 'the model has no version folder')
    >>> report.errors[0].fix
    'create m/1/ and put the model file in it'
    """
    linter = _Linter(Path(path))
    linter.run()
    return ValidationReport(Path(path), sorted(linter.configs), linter.issues)


# ----------------------------------------------------------------------------- helpers
def _line_of(text: str, pattern: str, start: int = 1) -> int | None:
    """The first line (1-based, from ``start``) matching the regex ``pattern``."""
    for number, line in enumerate(text.splitlines()[start - 1:], start):
        if re.search(pattern, line):
            return number
    return None


def _tensor_pattern(name: str) -> str:
    return r'\bname\s*:\s*"' + re.escape(name) + '"'


def _dtype_name(data_type: int) -> str:
    return model_config_pb2().DataType.Name(data_type)


def _version_folders(model_dir: Path) -> dict[int, Path]:
    return {int(p.name): p for p in model_dir.iterdir()
            if p.is_dir() and p.name.isascii() and p.name.isdigit() and not p.name.startswith("0")}


def _versions_to_load(config: ModelConfig, available: Sequence[int]) -> list[int]:
    from ..repository import model_versions_to_load

    return model_versions_to_load(config, available)


def _close(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


@dataclasses.dataclass
class _Model:
    config: ModelConfig
    text: str
    folder: Path
    config_file: Path
    versions: dict[int, Path]


class _Linter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.issues: list[Issue] = []
        self.configs: dict[str, _Model] = {}

    # --------------------------------------------------------------------- reporting
    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    def add(self, severity: str, code: str, path: Path, message: str, fix: str = "", *, model: str | None = None,
            field: str | None = None, line: int | None = None) -> None:
        issue = Issue(severity, code, self._rel(path), message, fix, model, field, line)
        if issue not in self.issues:  # e.g. one batch problem seen from every tensor of the graph
            self.issues.append(issue)

    # --------------------------------------------------------------------- repository
    def run(self) -> None:
        if not self.root.is_dir():
            self.add(ERROR, "repository-missing", self.root, "the model repository is not a folder",
                     "pass the folder given to tritonserver --model-repository")
            return
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            self.add(WARNING, "empty-repository", self.root, "the repository has no model folders",
                     "put one folder per model here: <model>/config.pbtxt and <model>/1/<model file>")
        for folder in folders:
            self.lint_model(folder)
        for model in self.configs.values():
            if model.config.platform == "ensemble":
                self.lint_ensemble(model)

    # --------------------------------------------------------------------- one model folder
    def lint_model(self, folder: Path) -> None:
        config_file = folder / "config.pbtxt"
        name = folder.name
        if not config_file.is_file():
            guess = self._guess_setting(folder)
            fix = (f"write {config_file.name} with name: \"{name}\"" + (f" and {guess}" if guess else "")
                   + ", its inputs, outputs and max_batch_size")
            if guess is None:
                self.add(ERROR, "no-config", config_file, "the model folder has no config.pbtxt, and no model file "
                         "Triton could build one from", fix, model=name)
            else:
                self.add(WARNING, "no-config", config_file, "the model folder has no config.pbtxt: Triton "
                         "auto-completes one from the model file, so batching, instances and tensors are not "
                         "what you chose", fix, model=name)
            return
        text = config_file.read_text(errors="replace")
        config = ModelConfig()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            message = re.sub(r"^\d+:\d+ : ", "", str(exc))
            self.add(ERROR, "parse-error", config_file, f"does not parse as Triton's ModelConfig: {message}",
                     "check the field name, value and brackets at this line against model_config.proto",
                     model=name, line=exc.GetLine() or None)
            return
        if config.name and config.name != name:
            self.add(ERROR, "name-mismatch", config_file,
                     f'name "{config.name}" differs from the folder name "{name}"',
                     f'set name: "{name}" or rename the folder to {config.name}', model=name, field="name",
                     line=_line_of(text, r"^\s*name\s*:"))
        model = _Model(config, text, folder, config_file, _version_folders(folder))
        self.configs[name] = model
        kind = self.lint_platform(model)
        self.lint_tensors(model)
        self.lint_batching(model)
        self.lint_instances(model)
        for version in self.lint_versions(model, kind):
            self.lint_files(model, kind, version)

    def _guess_setting(self, folder: Path) -> str | None:
        for version in sorted(_version_folders(folder).values()):
            for child in sorted(version.iterdir()):
                if child.name in FILE_SETTINGS:
                    return FILE_SETTINGS[child.name]
        return None

    def lint_platform(self, model: _Model) -> str:
        """The kind used for file checks: a platform, a backend, "ensemble" or "unknown"."""
        config, path, name = model.config, model.config_file, model.folder.name
        platform, backend = config.platform, config.backend
        platform_line = _line_of(model.text, r"^\s*platform\s*:")
        backend_line = _line_of(model.text, r"^\s*backend\s*:")
        if platform == "ensemble" or config.HasField("ensemble_scheduling"):
            if platform != "ensemble":
                self.add(ERROR, "ensemble-platform", path, "ensemble_scheduling needs platform \"ensemble\"",
                         'set platform: "ensemble" (and no backend)', model=name, field="platform",
                         line=platform_line or _line_of(model.text, r"ensemble_scheduling"))
            elif not config.HasField("ensemble_scheduling") or not config.ensemble_scheduling.step:
                self.add(ERROR, "ensemble-steps", path, 'platform "ensemble" without ensemble_scheduling steps',
                         "add ensemble_scheduling { step [ ... ] } naming the models to run", model=name,
                         field="ensemble_scheduling", line=platform_line)
            return "ensemble"
        if not platform and not backend:
            guess = self._guess_setting(model.folder)
            if guess is None:
                self.add(ERROR, "no-backend", path, "neither platform nor backend says which backend runs the model",
                         'add backend: "python" (or the platform of the model file)', model=name,
                         field="platform/backend", line=1)
                return "unknown"
            # Triton's auto-complete picks the backend from the model file's name; say it explicitly.
            self.add(WARNING, "no-backend", path, "neither platform nor backend is set, so Triton guesses the "
                     "backend from the model file", f"add {guess}", model=name, field="platform/backend", line=1)
            return _kind_of_setting(guess)
        if platform and platform not in PLATFORM_BACKENDS:
            close = _close(platform, list(PLATFORM_BACKENDS) + ["ensemble"])
            self.add(ERROR, "unknown-platform", path, f'unknown platform "{platform}"{close}',
                     "use one of " + ", ".join(sorted(PLATFORM_BACKENDS)) + ', or backend: "..." instead',
                     model=name, field="platform", line=platform_line)
            return "unknown"
        if platform and backend and PLATFORM_BACKENDS[platform] != backend:
            # Triton loads the model with the backend and ignores the platform: the config says two things.
            self.add(WARNING, "platform-backend-mismatch", path,
                     f'platform "{platform}" is run by backend "{PLATFORM_BACKENDS[platform]}", not "{backend}"; '
                     f'Triton uses backend "{backend}" and ignores the platform',
                     f'drop platform, or set backend: "{PLATFORM_BACKENDS[platform]}"', model=name, field="backend",
                     line=backend_line)
        elif platform:
            return platform
        if backend not in KNOWN_BACKENDS:
            self.add(WARNING, "unknown-backend", path,
                     f'backend "{backend}" is not one Triton ships{_close(backend, KNOWN_BACKENDS)}; its files are '
                     "not checked", "install the backend in Triton's backend directory, or fix the name",
                     model=name, field="backend", line=backend_line)
            return "unknown"
        return {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch", "tensorrt": "tensorrt_plan"}.get(
            backend, backend)

    def lint_tensors(self, model: _Model) -> None:
        config, path, name, text = model.config, model.config_file, model.folder.name, model.text
        if not config.output:
            # The Python backend may declare outputs in auto_complete_config; every other backend needs them.
            python = config.backend == "python"
            self.add(WARNING if python else ERROR, "no-outputs", path,
                     "declares no output" + (" (only auto_complete_config in model.py could add them)" if python
                                             else "; a model needs at least one"),
                     'add output [ { name: "...", data_type: TYPE_FP32, dims: [ ... ] } ]', model=name,
                     field="output")
        if not config.input and config.platform in PLATFORM_BACKENDS:
            self.add(ERROR, "no-inputs", path, f'{config.platform} models need at least one input',
                     'add input [ { name: "...", data_type: ..., dims: [ ... ] } ]', model=name, field="input")
        for kind, tensors in (("input", config.input), ("output", config.output)):
            seen: set[str] = set()
            for t in tensors:
                line = _line_of(text, _tensor_pattern(t.name)) if t.name else None
                field = f"{kind} '{t.name}'"
                if not t.name:
                    self.add(ERROR, "tensor-name", path, f"an {kind} has no name", 'add name: "..."',
                             model=name, field=kind)
                    continue
                if t.name in seen:
                    # Triton 2.51 loads it; the second declaration silently shadows the first.
                    self.add(WARNING, "duplicate-tensor", path, f"{kind} '{t.name}' is declared twice (the "
                             "second declaration shadows the first)", f"give every {kind} its own name, or "
                             "delete the copy", model=name, field=field, line=line)
                seen.add(t.name)
                if t.data_type == model_config_pb2().TYPE_INVALID:
                    self.add(ERROR, "no-data-type", path, "has no data_type",
                             "add data_type: TYPE_FP32 (or the tensor's type)", model=name,
                             field=f"{field} data_type", line=line)
                if not t.dims and not t.HasField("reshape") and config.platform != "ensemble":
                    self.add(ERROR, "empty-dims", path, "dims is empty",
                             "use dims: [ 1 ] for one value per batch item, with reshape: { shape: [ ] } "
                             "if the model takes a scalar", model=name, field=f"{field} dims", line=line)
                bad = [d for d in t.dims if d == 0 or d < -1]
                if bad:
                    self.add(ERROR, "bad-dims", path, f"dims {list(t.dims)} has {bad[0]}",
                             "dims are positive sizes, or -1 for a variable size", model=name,
                             field=f"{field} dims", line=line)
                if t.HasField("reshape") and all(d > 0 for d in t.dims) and all(d > 0 for d in t.reshape.shape):
                    size, reshaped = _product(t.dims), _product(t.reshape.shape)
                    if size != reshaped:
                        self.add(ERROR, "reshape-size", path,
                                 f"reshape {list(t.reshape.shape)} holds {reshaped} elements, dims {list(t.dims)} "
                                 f"hold {size}", "make reshape.shape and dims describe the same number of elements",
                                 model=name, field=f"{field} reshape", line=line)

    def lint_batching(self, model: _Model) -> None:
        config, path, name, text = model.config, model.config_file, model.folder.name, model.text
        mbs_line = _line_of(text, r"^\s*max_batch_size\s*:")
        if config.max_batch_size < 0:
            self.add(ERROR, "max-batch-size", path, f"max_batch_size is {config.max_batch_size}",
                     "use 0 (no batching) or a positive size", model=name, field="max_batch_size", line=mbs_line)
        if not config.HasField("dynamic_batching"):
            return
        db = config.dynamic_batching
        db_line = _line_of(text, r"dynamic_batching")
        if config.platform == "ensemble":
            self.add(ERROR, "ensemble-scheduler", path, "an ensemble cannot have dynamic_batching",
                     "drop dynamic_batching here; put it on the step models", model=name,
                     field="dynamic_batching", line=db_line)
            return
        if config.max_batch_size <= 0:
            # Triton loads it, and nothing is batched: the setting does nothing.
            self.add(WARNING, "batching-needs-max-batch-size", path, "dynamic_batching needs max_batch_size > 0 "
                     "and does nothing without it", "set max_batch_size (e.g. 64) or drop dynamic_batching",
                     model=name, field="dynamic_batching", line=db_line or mbs_line)
            return
        for size in db.preferred_batch_size:
            if size < 1 or size > config.max_batch_size:
                self.add(ERROR, "preferred-batch-size", path,
                         f"preferred_batch_size {size} is outside 1..max_batch_size ({config.max_batch_size})",
                         f"drop it, or raise max_batch_size to {size}", model=name,
                         field="dynamic_batching.preferred_batch_size",
                         line=_line_of(text, r"preferred_batch_size") or db_line)
        if db.priority_levels and not 1 <= db.default_priority_level <= db.priority_levels:
            self.add(ERROR, "priority-level", path,
                     f"default_priority_level {db.default_priority_level} is outside 1..{db.priority_levels}",
                     "set default_priority_level between 1 and priority_levels", model=name,
                     field="dynamic_batching.default_priority_level",
                     line=_line_of(text, r"default_priority_level") or db_line)
        for level in db.priority_queue_policy:
            if not 1 <= level <= max(db.priority_levels, 0):
                self.add(ERROR, "priority-level", path, f"priority_queue_policy names level {level}, which does "
                         f"not exist ({db.priority_levels} levels)", "key priority_queue_policy by existing levels",
                         model=name, field="dynamic_batching.priority_queue_policy",
                         line=_line_of(text, r"priority_queue_policy") or db_line)

    def lint_instances(self, model: _Model) -> None:
        config, path, name = model.config, model.config_file, model.folder.name
        if config.platform == "ensemble" and config.instance_group:
            self.add(ERROR, "ensemble-scheduler", path, "an ensemble cannot have instance groups",
                     "drop instance_group here; set it on the step models", model=name, field="instance_group",
                     line=_line_of(model.text, r"instance_group"))
        for group in config.instance_group:
            if group.count < 0:
                self.add(ERROR, "instance-count", path, f"instance_group count is {group.count}",
                         "use count: 1 or more", model=name, field="instance_group.count",
                         line=_line_of(model.text, r"\bcount\s*:"))

    def lint_versions(self, model: _Model, kind: str) -> list[Path]:
        """The version folders Triton would load, after checking the folder layout."""
        config, folder, name = model.config, model.folder, model.folder.name
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name.isdigit() and child.name.startswith("0"):
                self.add(WARNING, "version-folder", child, f"version folder '{child.name}' is ignored by Triton "
                         "(version numbers do not start with 0)", f"rename it to {int(child.name) or 1}", model=name)
            elif child.is_dir() and re.fullmatch(r"v\d+|version_?\d+", child.name):
                number = re.sub(r"\D", "", child.name)
                self.add(WARNING, "version-folder", child,
                         f"folder '{child.name}' is not a version folder (Triton reads only numbers)",
                         f"rename it to {number}", model=name)
        available = sorted(model.versions)
        if not available:
            if kind == "ensemble":
                self.add(ERROR, "no-version", folder, "the ensemble has no version folder",
                         f"create an empty folder {name}/1 (Triton needs one for ensembles too)", model=name)
            else:
                self.add(ERROR, "no-version", folder, "the model has no version folder",
                         f"create {name}/1/ and put the model file in it", model=name)
            return []
        loaded = _versions_to_load(config, available)
        if not loaded:
            policy = text_format.MessageToString(config.version_policy, as_one_line=True)
            self.add(ERROR, "version-policy", model.config_file,
                     f"version_policy {{ {policy} }} selects none of the version folders {available}",
                     "add the versions it names, or change version_policy", model=name, field="version_policy",
                     line=_line_of(model.text, r"version_policy"))
        return [model.versions[v] for v in loaded]

    # --------------------------------------------------------------------- files
    def lint_files(self, model: _Model, kind: str, version_dir: Path) -> None:
        config, name = model.config, model.folder.name
        if kind in ("ensemble", "unknown", "tensorflow"):
            return
        if kind == "fil":
            self.lint_fil(model, version_dir)
            return
        default = DEFAULT_FILES.get(kind)
        if default is None:
            return
        target = version_dir / (config.default_model_filename or default)
        if not target.exists():
            present = sorted(p.name for p in version_dir.iterdir())
            other = next((p for p in present if p in FILE_SETTINGS and p != default), None)
            if other is not None:
                self.add(ERROR, "file-backend-mismatch", model.config_file,
                         f"{kind} loads {target.name}, but the version folder {version_dir.name}/ holds {other}",
                         f"set {FILE_SETTINGS[other]} in config.pbtxt, or put a {target.name} there",
                         model=name, field="platform" if config.platform else "backend",
                         line=_line_of(model.text, r"^\s*(platform|backend)\s*:"))
            else:
                self.add(ERROR, "model-file-missing", target, f"the model file {target.name} is missing"
                         + (f" (the folder holds {', '.join(present)})" if present else " (the folder is empty)"),
                         f"put the model at {self._rel(target)}, or set default_model_filename",
                         model=name, field="default_model_filename" if config.default_model_filename else None)
            return
        if kind == "onnxruntime_onnx":
            self.lint_onnx(model, target)
        elif kind == "pytorch_libtorch":
            self.lint_torch(model, target)
        elif kind == "python":
            self.lint_python(model, target)

    def lint_python(self, model: _Model, target: Path) -> None:
        name = model.folder.name
        source = target.read_text(errors="replace")
        try:
            tree = ast.parse(source, filename=str(target))
        except SyntaxError as exc:
            self.add(ERROR, "python-syntax", target, f"model.py does not compile: {exc.msg}",
                     "fix the Python at this line", model=name, line=exc.lineno)
            return
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        if "TritonPythonModel" not in classes:
            self.add(ERROR, "python-model-class", target, "model.py defines no class TritonPythonModel",
                     "define class TritonPythonModel with execute(self, requests)", model=name)
            return
        methods = {n.name for n in classes["TritonPythonModel"].body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if "execute" not in methods:
            self.add(ERROR, "python-model-execute", target, "TritonPythonModel has no execute method",
                     "add def execute(self, requests) returning one InferenceResponse per request", model=name,
                     line=classes["TritonPythonModel"].lineno)

    # --------------------------------------------------------------------- ONNX
    def lint_onnx(self, model: _Model, target: Path) -> None:
        try:
            import onnx
        except ImportError:
            return  # without onnx here, only the file's presence is checked
        config, name, text = model.config, model.folder.name, model.text
        path = target / "model.onnx" if target.is_dir() else target
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as exc:  # a corrupt file: say so rather than crash the linter
            self.add(ERROR, "model-file-unreadable", target,
                     f"onnx cannot read the model: {type(exc).__name__}: {_first_sentence(exc)}",
                     "re-export the model", model=name)
            return
        initializers = {i.name for i in graph.initializer}
        graph_inputs = {v.name: v for v in graph.input if v.name not in initializers}
        graph_outputs = {v.name: v for v in graph.output}
        batched = config.max_batch_size > 0
        for kind, tensors, known in (("input", config.input, graph_inputs), ("output", config.output, graph_outputs)):
            for t in tensors:
                line = _line_of(text, _tensor_pattern(t.name))
                field = f"{kind} '{t.name}'"
                value = known.get(t.name)
                if value is None:
                    self.add(ERROR, "onnx-tensor-missing", model.config_file,
                             f"is not an {kind} of the ONNX graph{_close(t.name, known)}",
                             f"name the {kind}s as the graph does: {sorted(known)}", model=name, field=field, line=line)
                    continue
                self._check_onnx_tensor(model, t, value, batched, field, line, onnx)
        declared = {t.name for t in config.input}
        for missing in sorted(set(graph_inputs) - declared):
            self.add(ERROR, "onnx-input-undeclared", model.config_file,
                     f"the ONNX graph needs input '{missing}', which the config does not declare",
                     f"add input '{missing}' to config.pbtxt", model=name, field="input")

    def _check_onnx_tensor(self, model: _Model, t: Any, value: Any, batched: bool, field: str, line: int | None,
                           onnx: Any) -> None:
        name = model.folder.name
        tensor_type = value.type.tensor_type
        from ..backends.onnx import ORT_TYPES

        onnx_type = onnx.helper.tensor_dtype_to_string(tensor_type.elem_type) if tensor_type.elem_type else None
        ort_name = {"TensorProto.FLOAT": "tensor(float)", "TensorProto.DOUBLE": "tensor(double)",
                    "TensorProto.FLOAT16": "tensor(float16)", "TensorProto.BFLOAT16": "tensor(bfloat16)",
                    "TensorProto.BOOL": "tensor(bool)"}.get(onnx_type or "", "")
        if not ort_name and onnx_type:
            ort_name = f"tensor({onnx_type.split('.')[-1].lower()})"
        expected = ORT_TYPES.get(ort_name)
        if onnx_type == "TensorProto.STRING":
            expected = "BYTES"
        got = _dtype_name(t.data_type).replace("TYPE_", "")
        got = "BYTES" if got == "STRING" else got
        if expected and got != expected:
            self.add(ERROR, "dtype-mismatch", model.config_file, f"data_type TYPE_{got} but the ONNX graph has {expected}",
                     f"set data_type: TYPE_{'STRING' if expected == 'BYTES' else expected}", model=name,
                     field=f"{field} data_type", line=line)
        if not tensor_type.HasField("shape"):
            return  # rank unknown to the graph: nothing to compare
        graph_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        model_dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        full = ([-1] if batched else []) + [int(d) for d in model_dims]
        if len(full) != len(graph_dims):
            if batched and len(graph_dims) == len(model_dims) and graph_dims[:1] != [-1]:
                fix = "the graph has no batch dimension: set max_batch_size: 0, or export it with a dynamic first axis"
            elif not batched and len(graph_dims) == len(model_dims) + 1 and graph_dims[0] == -1:
                fix = f"the graph's first axis is a batch: set max_batch_size > 0 and dims: {graph_dims[1:]}"
            else:
                fix = f"set dims to {graph_dims[1:] if batched else graph_dims} (dims exclude the batch dimension)"
            self.add(ERROR, "dims-mismatch", model.config_file,
                     f"dims {list(t.dims)}{' plus the batch dimension' if batched else ''} give rank {len(full)}, "
                     f"the ONNX graph has rank {len(graph_dims)} (shape {graph_dims})", fix, model=name,
                     field=f"{field} dims", line=line)
            return
        if batched and graph_dims[0] > 0:
            self.add(ERROR, "batch-mismatch", model.config_file,
                     f"max_batch_size is {model.config.max_batch_size} but the ONNX graph fixes the first "
                     f"dimension at {graph_dims[0]}", "set max_batch_size: 0, or export the graph with a dynamic "
                     "batch axis (torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}))", model=name,
                     field="max_batch_size", line=_line_of(model.text, r"^\s*max_batch_size\s*:"))
            return
        for axis, (mine, theirs) in enumerate(zip(full, graph_dims)):
            if mine > 0 and theirs > 0 and mine != theirs:
                self.add(ERROR, "dims-mismatch", model.config_file,
                         f"dims {list(t.dims)} differ from the ONNX graph's shape {graph_dims} at axis {axis}",
                         f"set dims to {[d for d in graph_dims[1 if batched else 0:]]}", model=name,
                         field=f"{field} dims", line=line)
                return

    # --------------------------------------------------------------------- PyTorch
    def lint_torch(self, model: _Model, target: Path) -> None:
        from ..backends.torch import named_index

        config, name, text = model.config, model.folder.name, model.text
        forward_args = self._forward_arguments(model, target)
        inputs = [t.name for t in config.input]
        outputs = [t.name for t in config.output]
        if forward_args is not None and len(forward_args) != len(inputs):
            self.add(ERROR, "torch-input-count", model.config_file,
                     f"forward() takes {len(forward_args)} tensors ({', '.join(forward_args)}), the config declares "
                     f"{len(inputs)}", "declare one input per forward() argument", model=name, field="input")
        by_argument = forward_args is not None and bool(inputs) and all(n in forward_args for n in inputs)
        indices = [named_index(n) for n in inputs]
        if inputs and not by_argument:
            if all(i is not None for i in indices):
                self._check_indices(model, "input", inputs, indices)
            else:
                odd = next(n for n, i in zip(inputs, indices) if i is None and n not in (forward_args or ()))
                args = f"forward()'s argument names ({', '.join(forward_args)})" if forward_args else "forward()'s argument names"
                self.add(WARNING, "torch-naming", model.config_file,
                         f"'{odd}' is neither one of {args} nor <name>__<index>, so the PyTorch backend binds "
                         "inputs by their order in the config", "name inputs after forward()'s arguments or "
                         "INPUT__0, INPUT__1, ...", model=name, field=f"input '{odd}'",
                         line=_line_of(text, _tensor_pattern(odd)))
        out_indices = [named_index(n) for n in outputs]
        if outputs and all(i is not None for i in out_indices):
            self._check_indices(model, "output", outputs, out_indices)
        elif outputs:
            odd = next(n for n, i in zip(outputs, out_indices) if i is None)
            self.add(WARNING, "torch-naming", model.config_file,
                     f"output '{odd}' does not follow <name>__<index>, so the PyTorch backend maps outputs by their "
                     "order in the config", "name outputs OUTPUT__0, OUTPUT__1, ... in the order forward() returns them",
                     model=name, field=f"output '{odd}'", line=_line_of(text, _tensor_pattern(odd)))

    def _check_indices(self, model: _Model, kind: str, names: list[str], indices: list[int | None]) -> None:
        if sorted(i for i in indices if i is not None) == list(range(len(names))):
            return
        self.add(ERROR, "torch-naming", model.config_file,
                 f"the {kind} indices {dict(zip(names, indices))} are not 0..{len(names) - 1}, each once",
                 f"number the {kind}s <name>__0 .. <name>__{len(names) - 1} as forward() "
                 + ("takes them" if kind == "input" else "returns them"),
                 model=model.folder.name, field=kind,
                 line=_line_of(model.text, _tensor_pattern(names[0])))

    def _forward_arguments(self, model: _Model, target: Path) -> list[str] | None:
        try:
            import torch
        except ImportError:
            return None
        try:
            module = torch.jit.load(str(target), map_location="cpu")
        except Exception as exc:  # not TorchScript, or saved by a newer torch
            self.add(ERROR, "model-file-unreadable", target,
                     f"torch.jit.load cannot read it: {type(exc).__name__}: {_first_sentence(exc)}",
                     "save a TorchScript module (torch.jit.script or torch.jit.trace, then torch.jit.save)",
                     model=model.folder.name)
            return None
        schema = getattr(module.forward, "schema", None)
        return [a.name for a in schema.arguments[1:]] if schema is not None else None

    # --------------------------------------------------------------------- FIL
    def lint_fil(self, model: _Model, version_dir: Path) -> None:
        config, name, text, path = model.config, model.folder.name, model.text, model.config_file
        params = {k: v.string_value for k, v in config.parameters.items()}
        first = version_dir == model.versions[min(model.versions)] if model.versions else True
        if first:
            self._lint_fil_config(model, params)
        model_type = params.get("model_type", "xgboost")
        if model_type not in FIL_MODEL_FILES:
            return  # reported by _lint_fil_config
        target = version_dir / (config.default_model_filename or FIL_MODEL_FILES[model_type])
        if not target.is_file():
            present = sorted(p.name for p in version_dir.iterdir())
            other = next((p for p in present if p in FILE_SETTINGS), None)
            fix = (f"set {FILE_SETTINGS[other]}" if other and other in FIL_MODEL_FILES.values()
                   else f"save the model as {target.name}, or set default_model_filename")
            self.add(ERROR, "model-file-missing", target,
                     f"FIL with model_type \"{model_type}\" loads {target.name}, which is missing"
                     + (f" (the folder holds {', '.join(present)})" if present else ""), fix, model=name,
                     field="parameters.model_type", line=_line_of(text, r'"model_type"'))
            return
        self._lint_forest(model, params, model_type, target)
        del path

    def _lint_fil_config(self, model: _Model, params: dict[str, str]) -> None:
        config, name, text, path = model.config, model.folder.name, model.text, model.config_file

        def at(key: str) -> int | None:
            return _line_of(text, f'"{re.escape(key)}"')

        if "model_type" not in params:
            self.add(WARNING, "fil-parameter", path, 'no model_type: FIL assumes "xgboost" (legacy binary, xgboost.model)',
                     'set parameters { key: "model_type" value: { string_value: "xgboost_json" } } (or your format)',
                     model=name, field="parameters.model_type")
        elif params["model_type"] not in FIL_MODEL_FILES:
            self.add(ERROR, "fil-parameter", path, f'unknown model_type "{params["model_type"]}"'
                     f'{_close(params["model_type"], FIL_MODEL_FILES)}', "use one of " + ", ".join(FIL_MODEL_FILES),
                     model=name, field="parameters.model_type", line=at("model_type"))
        if "output_class" not in params:
            self.add(WARNING, "fil-parameter", path, "output_class is not set, so FIL decides whether this is a "
                     "classifier", 'set output_class to "true" (classifier) or "false" (regressor)', model=name,
                     field="parameters.output_class")
        for key in FIL_FLAGS:
            if key in params and params[key].lower() not in ("true", "false"):
                self.add(ERROR, "fil-parameter", path, f'{key} is "{params[key]}", not "true" or "false"',
                         f'set {key} to "true" or "false"', model=name, field=f"parameters.{key}", line=at(key))
        if "threshold" in params:
            try:
                float(params["threshold"])
            except ValueError:
                self.add(ERROR, "fil-parameter", path, f'threshold "{params["threshold"]}" is not a number',
                         'set threshold to a probability such as "0.5"', model=name, field="parameters.threshold",
                         line=at("threshold"))
        for key, choices in FIL_CHOICES.items():
            if key in params and params[key] not in choices:
                self.add(ERROR, "fil-parameter", path, f'{key} "{params[key]}" is not one of {", ".join(choices)}',
                         f"use one of {', '.join(choices)}", model=name, field=f"parameters.{key}", line=at(key))
        for key in FIL_INTEGERS:
            if key in params and not params[key].lstrip("-").isdigit():
                self.add(ERROR, "fil-parameter", path, f'{key} "{params[key]}" is not an integer',
                         f"set {key} to a whole number", model=name, field=f"parameters.{key}", line=at(key))
        if params.get("predict_proba", "").lower() == "true" and params.get("output_class", "").lower() == "false":
            self.add(WARNING, "fil-parameter", path, "predict_proba applies to classifiers, but output_class is false",
                     'set output_class "true", or drop predict_proba', model=name, field="parameters.predict_proba",
                     line=at("predict_proba"))
        for kind, tensors, expected in (("input", config.input, "input__0"), ("output", config.output, "output__0")):
            names = [t.name for t in tensors]
            if names and names != [expected]:
                self.add(ERROR, "fil-tensor-name", path, f"FIL reads only {expected}, the config has {names}",
                         f'name the {kind} "{expected}"', model=name, field=kind,
                         line=_line_of(text, _tensor_pattern(names[0])))
            for t in tensors:
                if t.data_type != model_config_pb2().TYPE_FP32:
                    self.add(ERROR, "dtype-mismatch", path, f"FIL {kind}s are TYPE_FP32, this one is "
                             f"{_dtype_name(t.data_type)}", "set data_type: TYPE_FP32", model=name,
                             field=f"{kind} '{t.name}' data_type", line=_line_of(text, _tensor_pattern(t.name)))
        if config.max_batch_size <= 0:
            self.add(WARNING, "fil-batch", path, "FIL models take a batch of rows, but max_batch_size is 0",
                     "set max_batch_size (FIL batches well: thousands of rows is fine)", model=name,
                     field="max_batch_size")

    def _lint_forest(self, model: _Model, params: dict[str, str], model_type: str, target: Path) -> None:
        try:
            import treelite
        except ImportError:
            return
        config, name, text = model.config, model.folder.name, model.text
        try:
            if model_type in ("xgboost_json", "xgboost_ubj"):
                forest = treelite.frontend.load_xgboost_model(
                    target, format_choice="json" if model_type == "xgboost_json" else "ubjson",
                    allow_unknown_field=params.get("xgboost_allow_unknown_field", "false").lower() == "true")
            elif model_type == "xgboost":
                forest = treelite.frontend.load_xgboost_model_legacy_binary(target)
            elif model_type == "lightgbm":
                forest = treelite.frontend.load_lightgbm_model(target)
            else:
                forest = treelite.Model.deserialize(str(target))
        except Exception as exc:  # a file in another format than model_type says
            self.add(ERROR, "model-file-unreadable", target,
                     f"Treelite cannot read it as {model_type}: {type(exc).__name__}: {_first_sentence(exc)}",
                     "check that model_type names the file's format, and that the file is a saved model",
                     model=name, field="parameters.model_type")
            return
        inputs = [t for t in config.input if t.name == "input__0"]
        features = int(forest.num_feature)
        if inputs and list(inputs[0].dims) not in ([features], [-1]):
            self.add(ERROR, "dims-mismatch", model.config_file,
                     f"input__0 dims {list(inputs[0].dims)}, but the forest reads {features} features",
                     f"set dims: [ {features} ]", model=name, field="input 'input__0' dims",
                     line=_line_of(text, _tensor_pattern("input__0")))

    # --------------------------------------------------------------------- ensembles
    def lint_ensemble(self, model: _Model) -> None:
        config, name, text, path = model.config, model.folder.name, model.text, model.config_file
        steps = list(config.ensemble_scheduling.step)
        # tensor -> (data_type, dims, batched, where it comes from)
        produced: dict[str, tuple[int, list[int], bool, str]] = {
            t.name: (t.data_type, list(t.dims), config.max_batch_size > 0, "the ensemble input") for t in config.input}
        ensemble_inputs = set(produced)
        writers: dict[str, int] = {}
        consumed: set[str] = set()
        for index, step in enumerate(steps):
            field = f"ensemble_scheduling.step[{index}]"
            line = _line_of(text, r'model_name\s*:\s*"' + re.escape(step.model_name) + '"')
            target = self.configs.get(step.model_name)
            if target is None:
                self.add(ERROR, "ensemble-step-missing", path,
                         f"step {index} runs model '{step.model_name}', which is not in the repository"
                         f"{_close(step.model_name, [m for m in self.configs if m != name])}",
                         "add that model's folder, or fix model_name", model=name, field=f"{field}.model_name",
                         line=line)
            elif step.model_version > 0 and step.model_version not in target.versions:
                self.add(ERROR, "ensemble-step-version", path,
                         f"step {index} asks for version {step.model_version} of '{step.model_name}', which has "
                         f"versions {sorted(target.versions)}", "use model_version: -1 (the latest) or an "
                         "existing version", model=name, field=f"{field}.model_version", line=line)
            step_inputs = {t.name: t for t in target.config.input} if target else {}
            step_outputs = {t.name: t for t in target.config.output} if target else {}
            step_batched = bool(target and target.config.max_batch_size > 0)
            for model_input, tensor in step.input_map.items():
                consumed.add(tensor)
                if target is not None and model_input not in step_inputs:
                    self.add(ERROR, "ensemble-wiring", path,
                             f"step {index} maps '{tensor}' to '{model_input}', which is not an input of "
                             f"'{step.model_name}'{_close(model_input, step_inputs)}",
                             f"use one of its inputs: {sorted(step_inputs)}", model=name, field=f"{field}.input_map",
                             line=_line_of(text, f'key\\s*:\\s*"{re.escape(model_input)}"') or line)
            if target is not None:
                for input_name, t in step_inputs.items():
                    if input_name not in step.input_map and not t.optional:
                        self.add(ERROR, "ensemble-wiring", path,
                                 f"step {index} does not feed input '{input_name}' of '{step.model_name}'",
                                 f'add input_map {{ key: "{input_name}" value: "<an ensemble tensor>" }}',
                                 model=name, field=f"{field}.input_map", line=line)
            for model_output, tensor in step.output_map.items():
                if target is not None and model_output not in step_outputs:
                    self.add(ERROR, "ensemble-wiring", path,
                             f"step {index} reads '{model_output}', which is not an output of "
                             f"'{step.model_name}'{_close(model_output, step_outputs)}",
                             f"use one of its outputs: {sorted(step_outputs)}", model=name,
                             field=f"{field}.output_map", line=_line_of(text, f'key\\s*:\\s*"{re.escape(model_output)}"') or line)
                    continue
                if tensor in writers or tensor in ensemble_inputs:
                    first = f"step {writers[tensor]}" if tensor in writers else "the ensemble input"
                    self.add(ERROR, "ensemble-wiring", path, f"tensor '{tensor}' is written by step {index} and by {first}",
                             "give each step output its own ensemble tensor name", model=name,
                             field=f"{field}.output_map", line=line)
                    continue
                writers[tensor] = index
                if target is not None:
                    out = step_outputs[model_output]
                    produced[tensor] = (out.data_type, list(out.dims), step_batched, f"output '{model_output}' of "
                                        f"'{step.model_name}'")
            if target is not None and config.max_batch_size > 0 and (
                    target.config.max_batch_size < config.max_batch_size):
                self.add(ERROR, "ensemble-batch", path,
                         f"max_batch_size {config.max_batch_size} is larger than step '{step.model_name}' allows "
                         f"({target.config.max_batch_size})",
                         f"set the ensemble's max_batch_size to at most {target.config.max_batch_size}, or raise the "
                         "step's", model=name, field="max_batch_size",
                         line=_line_of(text, r"^\s*max_batch_size\s*:"))
        self._lint_ensemble_types(model, steps, produced)
        for t in config.output:
            if t.name not in writers:
                self.add(ERROR, "ensemble-wiring", path, f"ensemble output '{t.name}' is not written by any step",
                         f'map a step output to it: output_map {{ key: "<step output>" value: "{t.name}" }}',
                         model=name, field=f"output '{t.name}'", line=_line_of(text, _tensor_pattern(t.name)))
            elif t.name in produced:
                self._compare(model, t, produced[t.name], f"ensemble output '{t.name}'",
                              step_batched=config.max_batch_size > 0)
        for t in config.input:
            if t.name not in consumed:
                self.add(ERROR, "ensemble-wiring", path, f"ensemble input '{t.name}' is not used by any step",
                         "map it to a step input, or remove it", model=name, field=f"input '{t.name}'",
                         line=_line_of(text, _tensor_pattern(t.name)))
        self._lint_ensemble_order(model, steps)

    def _lint_ensemble_types(self, model: _Model, steps: list[Any], produced: dict[str, Any]) -> None:
        config, name, path = model.config, model.folder.name, model.config_file
        for index, step in enumerate(steps):
            target = self.configs.get(step.model_name)
            if target is None:
                continue
            inputs = {t.name: t for t in target.config.input}
            for model_input, tensor in step.input_map.items():
                if tensor not in produced:
                    self.add(ERROR, "ensemble-wiring", path,
                             f"step {index} reads tensor '{tensor}', which no ensemble input or step output provides"
                             f"{_close(tensor, produced)}", "map it from an ensemble input or another step's output",
                             model=name, field=f"ensemble_scheduling.step[{index}].input_map",
                             line=_line_of(model.text, f'value\\s*:\\s*"{re.escape(tensor)}"'))
                elif model_input in inputs:
                    self._compare(model, inputs[model_input], produced[tensor],
                                  f"step {index} input '{model_input}' of '{step.model_name}'", step_batched=
                                  target.config.max_batch_size > 0)
        del config

    def _compare(self, model: _Model, consumer: Any, source: tuple[int, list[int], bool, str], what: str,
                 step_batched: bool | None = None) -> None:
        data_type, dims, source_batched, origin = source
        name, path = model.folder.name, model.config_file
        if data_type and consumer.data_type and data_type != consumer.data_type:
            self.add(ERROR, "ensemble-dtype", path,
                     f"{what} is {_dtype_name(consumer.data_type)} but receives {_dtype_name(data_type)} from {origin}",
                     "make both sides the same data_type (cast inside a step if needed)", model=name,
                     field="ensemble_scheduling")
            return
        mine = list(consumer.dims)
        # Batching models see the batch implicitly; a non-batching one names it (often as -1).
        if step_batched is False and source_batched and len(mine) == len(dims) + 1:
            mine = mine[1:]
        elif step_batched and not source_batched and len(dims) == len(mine) + 1:
            dims = dims[1:]
        if len(mine) != len(dims) or any(a > 0 and b > 0 and a != b for a, b in zip(mine, dims)):
            self.add(ERROR, "ensemble-dims", path, f"{what} has dims {list(consumer.dims)} but receives dims "
                     f"{source[1]} from {origin}", "make the producer's and consumer's dims agree (-1 for a "
                     "variable size)", model=name, field="ensemble_scheduling")

    def _lint_ensemble_order(self, model: _Model, steps: list[Any]) -> None:
        available = {t.name for t in model.config.input}
        pending = list(enumerate(steps))
        produced_anywhere = {v for s in steps for v in s.output_map.values()}
        while pending:
            ready = [(i, s) for i, s in pending if all(v in available for v in s.input_map.values())]
            if not ready:
                cyclic = [i for i, s in pending if all(v in available or v in produced_anywhere
                                                       for v in s.input_map.values())]
                if cyclic:
                    self.add(ERROR, "ensemble-cycle", model.config_file,
                             f"steps {cyclic} wait on each other's outputs (a cycle)",
                             "break the cycle: a step may only read ensemble inputs and earlier steps' outputs",
                             model=model.folder.name, field="ensemble_scheduling")
                return
            for item in ready:
                pending.remove(item)
                available.update(item[1].output_map.values())


def _product(values: Iterable[int]) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


def _kind_of_setting(setting: str) -> str:
    """``platform: "onnxruntime_onnx"`` / ``backend: "fil" (...)`` -> the kind lint_files checks."""
    value = setting.split('"')[1]
    return value


def _first_sentence(exc: BaseException, limit: int = 200) -> str:
    """The first sentence of a framework's error (they run to paragraphs), without C++ source locations."""
    text = re.sub(r"\[[0-9:]+\] \S+:\d+: ", "", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    sentence = text.split(". ")[0]
    return sentence[:limit].rstrip(".")
