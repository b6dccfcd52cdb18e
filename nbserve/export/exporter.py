"""``nbserve.export``: the production Triton repository for the notebook's models, and its report.

The repository is built in a hidden staging folder next to the target and swapped into place in one
rename, so the target is always either the previous repository or the complete new one:

1. each chosen model is written with the repository writer (:func:`nbserve.repository.write_repository`,
   which calls each backend's writer: the single writer per framework) with the config that served
   traffic in the notebook; ensembles bring their step models;
2. ``portable=True`` rewrites native models as Python-backend wrappers (:mod:`.portable`);
3. each Python-backend model gets a ``requirements.txt`` (:mod:`.requirements`);
4. README.md, ``kserve.yaml`` and the nbserve marker go next to the models (:mod:`.docs`);
5. the staging repository is linted (:mod:`.validate`): an error stops the export, nothing is written;
6. nothing under the staging folder may point outside it; then it replaces the target atomically.

An interrupted export (an exception, Ctrl-C, even SIGKILL) leaves the target as it was; a staging
folder left by a killed process is removed by the next export to the same place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..config import ModelConfig, parse
from ..errors import ExportError, NbserveError
from ..registry import RegisteredModel, Registry, default_registry
from ..repository import MARKER_FILE, write_repository
from . import docs, requirements
from .portable import make_portable, version_folders
from .validate import ValidationReport, validate

__all__ = ["export", "ExportReport", "ExportedModel"]

STAGING_TAG = ".nbserve-export-"
README_FILE, KSERVE_FILE, REQUIREMENTS_FILE = "README.md", "kserve.yaml", "requirements.txt"


# ----------------------------------------------------------------------------- the report
@dataclasses.dataclass
class ExportedModel:
    """One model folder of the exported repository."""

    name: str
    kind: str  # what Triton runs: "python", "onnxruntime_onnx", "fil", "ensemble", ...
    versions: list[int]
    instances: str  # "1 x CPU", "2 x GPU", "-" for ensembles
    files: list[tuple[str, int]]  # (path relative to the repository, bytes)
    source: str  # "registered", "ensemble step", or "written with '<model>'"
    portable: str | None = None  # the native framework a portable model.py wraps
    requirements: list[str] = dataclasses.field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(size for _, size in self.files)


@dataclasses.dataclass
class ExportReport:
    """What :func:`export` wrote: the models, their files and sizes, warnings, and how to run it."""

    path: Path
    models: list[ExportedModel]
    files: list[tuple[str, int]]  # README.md, kserve.yaml, ... at the repository root
    warnings: list[str]
    docker_run: str
    portable: bool
    duration_s: float
    validation: ValidationReport

    @property
    def size_bytes(self) -> int:
        return sum(m.size_bytes for m in self.models) + sum(size for _, size in self.files)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def model(self, name: str) -> ExportedModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def _rows(self) -> list[tuple[str, ...]]:
        return [
            (m.name, m.kind + (f" (portable {m.portable})" if m.portable else ""),
             ", ".join(str(v) for v in m.versions) or "-", m.instances, _size(m.size_bytes), str(len(m.files)),
             m.source)
            for m in self.models
        ]

    def __repr__(self) -> str:
        header = ("model", "kind", "versions", "instances", "size", "files", "source")
        rows = [header, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        table.insert(1, "  ".join("-" * w for w in widths))
        lines = [f"Exported {len(self.models)} model{'s' if len(self.models) != 1 else ''} to {self.path} "
                 f"({_size(self.size_bytes)}, {self.duration_s:.1f} s{', portable' if self.portable else ''})",
                 *table]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += ["Run it with:", f"  {self.docker_run}"]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in ("model", "kind", "versions", "instances", "size", "files", "source"))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self._rows())
        warnings = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        return (
            f"<div class='nbserve-export'><b>Exported {len(self.models)} models to "
            f"<code>{html.escape(str(self.path))}</code></b> ({_size(self.size_bytes)}, {self.duration_s:.1f} s)"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            + (f"<p>Warnings:</p><ul>{warnings}</ul>" if warnings else "")
            + f"<p>Run it with:</p><pre>{html.escape(self.docker_run)}</pre></div>"
        )


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ----------------------------------------------------------------------------- export
def export(
    path: str | os.PathLike[str],
    models: str | Iterable[Any] | None = None,
    overwrite: bool = False,
    *,
    portable: bool = False,
    registry: Registry | None = None,
    source: str | os.PathLike[str] | None = None,
    storage_uri: str | None = None,
    progress: bool | None = None,
    options: dict[str, Any] | None = None,
) -> ExportReport:
    """Write the production Triton repository for the registered models (and ensembles).

    Args:
        path: the repository folder to create (or replace, when nbserve wrote it).
        models: names (or RegisteredModels) to export; default all. Ensembles bring their steps.
        overwrite: replace an existing folder nbserve did not write.
        portable: write every ONNX, TorchScript and tree model as a Python-backend model that runs
            the same file with ONNX Runtime, torch or Treelite (for Triton builds without those backends).
        registry: where the models are registered (default: ``nbserve.register``'s).
        source: export an existing Triton repository instead of registered models: its model folders
            (all, or those in ``models``) are copied, then made portable and documented like the others.
        storage_uri: where the repository will be uploaded, for ``kserve.yaml``.
        progress: show a progress bar (tqdm.auto); default: only when the export takes over a second.
        options: backend writer options, e.g. ``{"torch_format": "onnx"}``.

    Returns:
        An :class:`ExportReport` (readable in a notebook): models, files, sizes, warnings, ``docker_run``.

    Raises:
        ExportError: the target may not be replaced, a model cannot be written, or the written
            repository does not validate; the target is then left as it was.
        ModelNotFound: a name in ``models`` is not registered.

    >>> import numpy as np, tempfile, nbserve
    >>> _ = nbserve.register(lambda x: x * 2, name="double", example=np.ones((1, 3), "float32"))
    >>> report = nbserve.export(tempfile.mkdtemp() + "/repo", ["double"])
    >>> report.names, sorted(p.name for p in report.path.iterdir())
    (['double'], ['.nbserve-repository', 'README.md', 'double', 'kserve.yaml'])
    >>> nbserve.remove("double")
    """
    started = time.perf_counter()
    registry = registry if registry is not None else default_registry
    target = Path(path).absolute()
    _check_target(target, overwrite)
    if source is not None:
        chosen, auto, names = [], set(), _select_folders(Path(source), models, target)
    else:
        (chosen, auto), names = _select(registry, models), []
    requirements.reset_distributions()  # packages installed since the last export count
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_TAG}{os.getpid()}-", suffix=".partial",
                                    dir=target.parent))
    try:
        repo = staging / target.name
        repo.mkdir()
        if source is not None:
            sources = _copy_models(repo, Path(source), names, progress)
        else:
            sources = _write_models(repo, staging, chosen, auto, options or {}, progress)
        report = _finish(repo, target, registry, chosen, sources, portable, storage_uri)
        _check_contained(repo)
        _swap_into_place(repo, target, staging)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, NbserveError) or not isinstance(exc, Exception):
            raise
        raise ExportError(f"exporting failed: {type(exc).__name__}: {exc}", got=str(target),
                          hint="nothing was written; fix the cause above and export again") from exc
    shutil.rmtree(staging, ignore_errors=True)
    report.duration_s = time.perf_counter() - started
    return report


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ExportError("the target is a file, not a folder", got=str(target), hint="choose a folder path")
    cwd = Path.cwd().resolve()
    resolved = target.resolve()
    if resolved in (Path(resolved.anchor), Path.home().resolve()) or resolved == cwd or resolved in cwd.parents:
        raise ExportError("refusing to replace this folder: it holds the working directory or your home",
                          got=str(target), hint="export to a new folder, e.g. nbserve.export('model_repository')")
    if target.exists() and not overwrite and not (target / MARKER_FILE).exists() and any(target.iterdir()):
        raise ExportError(
            "the target exists and was not written by nbserve",
            got=str(target),
            hint="choose a new folder, or pass overwrite=True to replace it",
        )


def _select(registry: Registry, models: str | Iterable[Any] | None) -> tuple[list[RegisteredModel], set[str]]:
    """The models to write (in registry order, ensemble steps included) and the names added for ensembles."""
    if models is None:
        wanted = registry.names()
    elif isinstance(models, (str, RegisteredModel)):
        wanted = [models.name if isinstance(models, RegisteredModel) else models]
    else:
        wanted = [m.name if isinstance(m, RegisteredModel) else str(m) for m in models]
    if not wanted:
        raise ExportError("there are no models to export",
                          hint="register models first (nbserve.register(obj, name=...)), or name them in models=[...]")
    selected = [registry.get(name) for name in dict.fromkeys(wanted)]  # ModelNotFound names close matches
    names = {m.name for m in selected}
    auto: set[str] = set()
    todo = list(selected)
    while todo:
        model = todo.pop()
        for version in model.versions.values():
            for step in version.config.ensemble_scheduling.step:
                if step.model_name not in names and step.model_name in registry:
                    names.add(step.model_name)
                    auto.add(step.model_name)
                    todo.append(registry.get(step.model_name))
    order = {n: i for i, n in enumerate(registry.names())}
    chosen = sorted((registry.get(n) for n in names), key=lambda m: order.get(m.name, 0))
    for model in chosen:
        for entry in model.versions.values():
            # A Python model with no callable and no folder it was read from has nothing to write
            # (models read from a repository are written by copying their files).
            if (entry.backend == "python" and entry.obj is None and not hasattr(entry.options.get("runner"), "fn")
                    and entry.options.get("source_dir") is None):
                raise ExportError(
                    "this Python model was read from a repository, so its code is not in the kernel",
                    model=model.name,
                    version=entry.version,
                    hint="export the repository itself: nbserve.export(path, source='that/repository'), "
                    "or register the function again",
                )
    return chosen, auto



def _select_folders(source: Path, models: str | Iterable[Any] | None, target: Path) -> list[str]:
    """The model folders of an existing repository to export."""
    if not source.is_dir():
        raise ExportError("the source repository is not a folder", got=str(source),
                          hint="pass the folder given to tritonserver --model-repository")
    if source.resolve() == target.resolve():
        raise ExportError("the source and the target are the same folder", got=str(source),
                          hint="export to a new folder")
    folders = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if models is None:
        wanted = folders
    else:
        wanted = [models] if isinstance(models, str) else [str(getattr(m, "name", m)) for m in models]
    missing = [name for name in wanted if name not in folders]
    if missing:
        raise ExportError("the source repository has no such model folder", got=missing,
                          expected=f"one of {folders}", hint="name model folders of the source repository")
    if not wanted:
        raise ExportError("the source repository has no model folders", got=str(source),
                          hint="pass a Triton repository: <model>/config.pbtxt and <model>/<version>/")
    return wanted


def _copy_models(repo: Path, source: Path, names: Sequence[str], progress: bool | None) -> dict[str, str]:
    """Copy model folders of an existing repository (links are copied as the files they point at)."""
    from tqdm.auto import tqdm

    from ..config import validate_name

    for name in tqdm(names, desc="nbserve export", unit="model", disable=progress is False,
                     delay=0 if progress else 1.0, leave=False):
        shutil.copytree(source / validate_name(name), repo / name, symlinks=False)
    return {name: f"copied from {source}" for name in names}


def _write_models(repo: Path, staging: Path, chosen: Sequence[RegisteredModel], auto: set[str],
                  options: dict[str, Any], progress: bool | None) -> dict[str, str]:
    """Write each model with the repository writer; returns folder -> where it came from."""
    from tqdm.auto import tqdm

    sources: dict[str, str] = {}
    bar = tqdm(chosen, desc="nbserve export", unit="model", disable=progress is False,
               delay=0 if progress else 1.0, leave=False)
    try:
        for index, model in enumerate(bar):
            bar.set_postfix_str(model.name, refresh=False)
            single = write_repository(staging / f"model-{index}", [model], options=options)
            for folder in sorted(p for p in single.iterdir() if p.is_dir()):
                if (repo / folder.name).exists():
                    raise ExportError(
                        f"two models write the folder '{folder.name}'",
                        model=model.name,
                        got=f"'{folder.name}' from '{model.name}' and from '{sources[folder.name]}'",
                        hint=f"rename one of them (a transformers model '{model.name}' also writes "
                        f"'{model.name}_tokenizer' and '{model.name}_model')",
                    )
                folder.rename(repo / folder.name)
                if folder.name == model.name:
                    sources[folder.name] = "ensemble step" if model.name in auto else "registered"
                else:
                    sources[folder.name] = f"written with '{model.name}'"
            shutil.rmtree(single)
    finally:
        bar.close()
    return sources


def _finish(repo: Path, target: Path, registry: Registry, chosen: Sequence[RegisteredModel],
            sources: dict[str, str], portable: bool, storage_uri: str | None) -> ExportReport:
    """Portable rewrite, requirements, docs and validation of the staged repository."""
    warnings: list[str] = []
    folders = sorted(p for p in repo.iterdir() if p.is_dir())
    wrapped = {folder.name: make_portable(folder) for folder in folders} if portable else {}
    if portable:
        for folder in folders:
            config = _config(folder)
            if config.platform == "tensorrt_plan" or config.backend == "tensorrt":
                warnings.append(f"'{folder.name}' stays a TensorRT plan in the portable export: a plan runs "
                                "only with TensorRT on the GPU model that built it")
    live = {m.name: m.latest for m in chosen}
    configs, reqs, req_files = [], {}, {}
    for folder in folders:
        config = _config(folder)
        configs.append(config)
        if config.backend == "python":
            entry = live.get(folder.name)
            fn = getattr(entry.options.get("runner"), "fn", None) if entry is not None else None
            found = requirements.requirements_for(requirements.modules_of_model_dir(folder, fn))
            (folder / REQUIREMENTS_FILE).write_text(requirements.render_requirements(folder.name, found))
            reqs[folder.name] = [r.line() for r in found]
            req_files[folder.name] = f"{folder.name}/{REQUIREMENTS_FILE}"
    pickled = [f.name for f in folders if any((v / "callable.pkl").is_file() for v in version_folders(f))]
    warnings += _deployment_warnings(configs, chosen, pickled)
    docker_line = docs.docker_run_line(target, configs, requirements=sorted(req_files.values()))
    versions = {folder.name: [int(v.name) for v in version_folders(folder)] for folder in folders}
    report_validation = validate(repo)
    if report_validation.errors:
        raise ExportError(
            "the written repository does not validate, so nothing was exported:\n"
            + "\n".join(str(i) for i in report_validation.errors),
            got=str(target),
            hint="this is an nbserve bug if the models served in the notebook; please report it with the lines above",
        )
    warnings += [str(i).replace(f"{repo.name}/", f"{target.name}/", 1) for i in report_validation.warnings]
    (repo / README_FILE).write_text(docs.readme(target.name, configs, docker_line=docker_line,
                                                requirements=req_files, warnings=warnings, versions=versions))
    (repo / KSERVE_FILE).write_text(docs.kserve_manifest(target.name, configs, storage_uri=storage_uri))
    (repo / MARKER_FILE).write_text("written by nbserve.export; safe to replace with nbserve.export(...)\n")
    exported = [
        ExportedModel(
            name=folder.name,
            kind="ensemble" if config.platform == "ensemble" else (config.platform or config.backend),
            versions=versions[folder.name],
            instances=docs._instances(config),
            files=_files(repo, folder),
            source=sources.get(folder.name, "registered"),
            portable=wrapped.get(folder.name),
            requirements=reqs.get(folder.name, []),
        )
        for folder, config in zip(folders, configs)
    ]
    root_files = [(p.name, p.stat().st_size) for p in sorted(repo.iterdir()) if p.is_file()]
    return ExportReport(path=target, models=exported, files=root_files, warnings=warnings, docker_run=docker_line,
                        portable=portable, duration_s=0.0, validation=report_validation)


def _config(folder: Path) -> ModelConfig:
    return parse((folder / "config.pbtxt").read_text(), path=str(folder / "config.pbtxt"))


def _files(repo: Path, folder: Path) -> list[tuple[str, int]]:
    return [(str(p.relative_to(repo)), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]


def _deployment_warnings(configs: Sequence[ModelConfig], chosen: Sequence[RegisteredModel],
                         pickled: list[str]) -> list[str]:
    warnings = []
    gpu = sorted(c.name for c in configs if any(g.kind == g.KIND_GPU for g in c.instance_group))
    if gpu:
        warnings.append(f"{', '.join(gpu)} run{'s' if len(gpu) == 1 else ''} on GPU instances (KIND_GPU): Triton "
                        "needs a GPU for them (register with instance_kind='cpu' to export CPU instances)")
    for model in chosen:
        entry = model.latest
        kinds = {g.kind for g in entry.config.instance_group}
        if entry.device == "gpu" and kinds and entry.config.instance_group[0].KIND_GPU not in kinds:
            warnings.append(f"'{model.name}' ran on a GPU in the notebook but its config asks for CPU instances")
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if pickled and python != docs.TRITON_PYTHON:
        warnings.append(
            f"{', '.join(pickled)} {'are' if len(pickled) > 1 else 'is a'} pickled Python callable"
            f"{'s' if len(pickled) > 1 else ''} written with Python {python}; {docs.TRITON_IMAGE} runs Python "
            f"{docs.TRITON_PYTHON}, and unpickling needs the same Python (see README.md, 'Custom Python environment')")
    return warnings


def _check_contained(repo: Path) -> None:
    """Nothing in the repository may point outside it (a symlink written by a model's files)."""
    root = repo.resolve()
    for dirpath, dirnames, filenames in os.walk(repo, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                resolved = path.resolve()
                if resolved != root and root not in resolved.parents:
                    raise ExportError("a written file points outside the repository", got=f"{path} -> {resolved}",
                                      hint="export copies of the files, not links to them")


def _swap_into_place(repo: Path, target: Path, staging: Path) -> None:
    """Put ``repo`` at ``target`` in one step; the previous repository ends up in ``staging``."""
    if not target.exists():
        repo.rename(target)
        return
    if _exchange(repo, target):
        return  # the old repository is now at ``repo``, inside staging, removed with it
    # No atomic exchange here (not Linux, or an old kernel): move the old one aside first.
    old = staging / f"{target.name}.old"
    target.rename(old)
    try:
        repo.rename(target)
    except BaseException:
        old.rename(target)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        at_fdcwd, rename_exchange = -100, 2
        return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return False


def _remove_stale_staging(target: Path) -> None:
    """Remove staging folders that killed exports to this target left behind (their process is gone)."""
    prefix = f".{target.name}{STAGING_TAG}"
    for path in target.parent.glob(f"{prefix}*.partial"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
