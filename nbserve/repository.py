"""The Triton model repository on disk: ``<model>/config.pbtxt`` and ``<model>/<version>/<files>``.

:func:`write_repository` writes registered models atomically (built in a temporary directory next to
the target, then renamed into place) and never outside the target; :func:`read_repository` reads a
Triton repository, ours or hand-written, back into a :class:`~nbserve.registry.Registry`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from .backends import backend, backend_for_config
from .config import ModelConfig, parse, render, validate
from .config import validate_name
from .errors import ConfigError, ExportError, NbserveError
from .registry import ModelVersion, RegisteredModel, Registry, entry_from_adapted

__all__ = ["write_repository", "read_repository", "MARKER_FILE", "model_versions_to_load"]

# Written at the root of every repository nbserve writes: it may overwrite those, and only those,
# without being told to.
MARKER_FILE = ".nbserve-repository"


def _entries(models: Iterable[Any]) -> list[list[ModelVersion]]:
    """Group what was given (RegisteredModels, ModelVersions, a Registry) into per-model lists."""
    groups: dict[str, list[ModelVersion]] = {}
    for item in models:
        if isinstance(item, RegisteredModel):
            versions = [item.versions[v] for v in sorted(item.versions)]
        elif isinstance(item, ModelVersion):
            versions = [item]
        else:
            raise ExportError(f"cannot write {type(item).__name__} to a repository",
                              hint="pass registered models, e.g. nbserve.models()")
        groups.setdefault(versions[0].name, []).extend(versions)
    return list(groups.values())


def _inside(root: Path, name: str) -> Path:
    """``root/name``, refusing any name that would land outside ``root``."""
    validate_name(name)
    target = (root / name).resolve()
    if target.parent != root.resolve():
        raise ConfigError(f"model name {name!r} escapes the repository", hint="use a plain name")
    return target


def write_repository(
    path: str | os.PathLike[str],
    models: Iterable[Any],
    *,
    overwrite: bool = False,
    options: dict[str, Any] | None = None,
) -> Path:
    """Write models to a Triton-layout repository at ``path``, atomically.

    Args:
        path: the repository directory to create.
        models: RegisteredModels or ModelVersions (a Registry iterates as its models).
        overwrite: replace an existing directory. Without it, only a repository nbserve wrote
            itself is replaced; any other existing path is refused.
        options: backend writer options (e.g. ``{"torch_format": "onnx"}``).

    Returns:
        The repository path.

    Raises:
        ExportError: the target exists and may not be replaced, or a writer failed (nothing is left).
    """
    target = Path(path).absolute()
    if target.exists() and not overwrite and not (target / MARKER_FILE).exists():
        raise ExportError(
            "the target exists and was not written by nbserve",
            got=str(target),
            hint="choose a new directory, or pass overwrite=True to replace it",
        )
    if target.exists() and not target.is_dir():
        raise ExportError("the target is a file", got=str(target), hint="choose a directory path")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        for versions in _entries(models):
            _write_model(staging, versions, dict(options or {}))
        (staging / MARKER_FILE).write_text("written by nbserve; safe to replace with nbserve.export(...)\n")
        _swap_into_place(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, NbserveError) or not isinstance(exc, Exception):
            raise
        raise ExportError(f"writing the repository failed: {type(exc).__name__}: {exc}", got=str(target)) from exc
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    # Move the old one aside first so the target path is never missing a whole repository.
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _writer(name: str) -> Any:
    if name == "ensemble":
        from . import ensemble

        return ensemble
    if name == "stateful":  # nbserve.register_stateful: a Python-backend model that keeps sequence state
        from . import stateful

        return stateful
    return backend(name)


def _write_model(root: Path, versions: list[ModelVersion], options: dict[str, Any]) -> None:
    name = versions[0].name
    model_dir = _inside(root, name)
    model_dir.mkdir()
    written: ModelConfig | None = None
    for entry in sorted(versions, key=lambda e: e.version):
        writer = _writer(entry.backend)
        version_dir = model_dir / str(entry.version)
        source_dir = entry.options.get("source_dir")
        if entry.obj is None and source_dir is not None and Path(source_dir).is_dir():
            shutil.copytree(source_dir, version_dir)
            written = entry.config
            continue
        version_dir.mkdir()
        config = writer.write(
            entry.obj,
            entry.config,
            version_dir,
            {**entry.options, **options, "repository": root, "version": entry.version},
        )
        written = config
    assert written is not None  # versions is never empty: _entries builds it from real versions
    text = render(validate(written))
    parse(text, path=str(model_dir / "config.pbtxt"))  # what we write must read back with Triton's proto
    (model_dir / "config.pbtxt").write_text(text)


# ----------------------------------------------------------------------------- reading
def model_versions_to_load(config: ModelConfig, available: Iterable[int]) -> list[int]:
    """The versions Triton would load under the config's ``version_policy`` (default: latest 1)."""
    versions = sorted(available)
    policy = config.version_policy
    if policy.HasField("all"):
        return versions
    if policy.HasField("specific"):
        return [v for v in versions if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if policy.HasField("latest") else 1
    return versions[-max(count, 1):]


def read_repository(
    path: str | os.PathLike[str],
    registry: Registry | None = None,
    *,
    models: Iterable[str] | None = None,
) -> Registry:
    """Read a Triton repository into a Registry (a new one unless given).

    Every model directory needs ``config.pbtxt`` and numeric version folders; the versions loaded
    follow the config's ``version_policy``. Ensembles are read after the models they call.

    Raises:
        ConfigError: a config does not parse or does not match its folder, naming the file.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError("model repository not found", got=str(root), hint="pass the repository directory")
    registry = registry if registry is not None else Registry()
    wanted = set(models) if models is not None else None
    configs: list[tuple[Path, ModelConfig]] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted is not None and model_dir.name not in wanted:
            continue
        configs.append((model_dir, read_model_config(model_dir)))
    # Ensembles last: their steps must be in the registry first.
    configs.sort(key=lambda item: item[1].platform == "ensemble")
    for model_dir, config in configs:
        load_model_dir(model_dir, config, registry)
    return registry


def read_model_config(model_dir: Path) -> ModelConfig:
    config_file = model_dir / "config.pbtxt"
    if not config_file.is_file():
        raise ConfigError(
            "model folder has no config.pbtxt",
            model=model_dir.name,
            got=str(model_dir),
            hint="write config.pbtxt next to the version folders",
        )
    config = parse(config_file.read_text(), path=str(config_file))
    if not config.name:
        config.name = model_dir.name
    if config.name != model_dir.name:
        raise ConfigError(
            "config name does not match its folder",
            model=model_dir.name,
            expected=f'name: "{model_dir.name}"',
            got=f'name: "{config.name}"',
            hint=f"rename the folder or set name in {config_file}",
        )
    return validate(config)


def load_model_dir(model_dir: Path, config: ModelConfig, registry: Registry) -> list[ModelVersion]:
    """Load the versions of one model folder into ``registry``."""
    # Triton's rule: version folders are numbers; names that start with 0 are ignored.
    folders = {int(p.name): p for p in model_dir.iterdir()
               if p.is_dir() and p.name.isascii() and p.name.isdigit() and not p.name.startswith("0")}
    available = sorted(folders)
    if config.platform == "ensemble":
        from .ensemble import ensemble_runner

        # Ensembles have an (empty) version folder in Triton's layout; accept its absence too.
        versions = model_versions_to_load(config, available or [1])
        loaded = []
        for version in versions:
            entry = ModelVersion(
                name=config.name, version=version, config=config, runner=ensemble_runner(config, registry),
                framework="ensemble", backend="ensemble",
            )
            registry.add(entry)
            loaded.append(entry)
        return loaded
    if not available:
        raise ConfigError(
            "model folder has no version folder",
            model=config.name,
            expected=f"{model_dir}/1/ holding the model files",
            got="none",
            hint="create a numeric version folder such as 1/",
        )
    versions = model_versions_to_load(config, available)
    if not versions:  # Triton refuses such a model too
        raise ConfigError(
            "no version folder matches the version_policy",
            model=config.name,
            expected=text_format.MessageToString(config.version_policy, as_one_line=True),
            got=f"version folders {available}",
            hint=f"add the version folders the policy names, or change version_policy in {model_dir / 'config.pbtxt'}",
        )
    module = backend_for_config(config)
    loaded = []
    for version in versions:
        adapted = module.read(config, folders[version])
        entry = entry_from_adapted(config.name, version, config, adapted, module.name)
        # A model read from files has no live object to serialize again: writing it copies its files.
        entry.options["source_dir"] = folders[version]
        registry.add(entry)
        loaded.append(entry)
    return loaded
