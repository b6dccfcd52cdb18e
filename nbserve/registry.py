"""Registered models: a live object plus exactly one Triton config, per version.

``register`` adapts any supported object through its backend, infers the signature, builds and
validates the config, and stores a new version. Widgets and the server subscribe to change events
so they follow re-registration without being told.
"""

from __future__ import annotations

import dataclasses
import html
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from .backends import backend, backend_for
from .backends.base import Adapted
from .config import ModelConfig, build_config, check_max_batch_size, render, validate_name
from .config import input_specs, output_specs, with_reshapes
from .ensemble import Ensemble, version_entry as ensemble_entry
from .errors import ConfigError, InferenceError, ModelNotFound, NbserveError
from .requests import check_inputs
from .tensors import TensorSpec
from .config import to_specs

__all__ = ["ModelVersion", "RegisteredModel", "Registry", "RegistryEvent", "default_registry"]


@dataclasses.dataclass(frozen=True)
class RegistryEvent:
    kind: Literal["registered", "removed"]
    name: str
    version: int | None


@dataclasses.dataclass(eq=False)
class ModelVersion:
    """One version of a model: what runs (``runner``) and how Triton sees it (``config``)."""

    name: str
    version: int
    config: ModelConfig
    runner: Callable[[dict[str, Any]], dict[str, Any]]
    framework: str
    backend: str  # backend module name: "python", "torch", ...
    obj: Any = None  # the live object; None when read from files
    device: str = "cpu"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    close: Callable[[], None] | None = None
    created_s: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def inputs(self) -> list[TensorSpec]:
        return input_specs(self.config)

    @property
    def outputs(self) -> list[TensorSpec]:
        return output_specs(self.config)

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one request directly, without a server (checks inputs as the server does)."""
        checked = check_inputs(self.config, inputs, version=self.version)
        try:
            return self.runner(checked)
        except NbserveError:
            raise  # already names the model and the fix (an ensemble's failing step, for one)
        except Exception as exc:
            raise InferenceError(f"the model raised {type(exc).__name__}: {exc}", model=self.name, version=self.version) from exc


class RegisteredModel:
    """All versions registered under one name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[int, ModelVersion] = {}

    @property
    def latest(self) -> ModelVersion:
        return self.versions[max(self.versions)]

    @property
    def version(self) -> int:
        return self.latest.version

    @property
    def config(self) -> ModelConfig:
        return self.latest.config

    @property
    def framework(self) -> str:
        return self.latest.framework

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.latest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.latest.outputs

    def get_version(self, version: int | str | None = None) -> ModelVersion:
        if version in (None, "", -1):
            return self.latest
        try:
            return self.versions[int(version)]
        except (KeyError, ValueError):
            raise ModelNotFound(
                "no such version",
                model=self.name,
                expected=f"one of {sorted(self.versions)}",
                got=version,
                hint="leave the version out for the latest",
            ) from None

    def infer(self, inputs: Mapping[str, Any], version: int | None = None) -> dict[str, Any]:
        return self.get_version(version).infer(inputs)

    @property
    def pbtxt(self) -> str:
        return render(self.config)

    def __repr__(self) -> str:
        sig = ", ".join(f"{s.name}:{s.dtype}{list(s.dims)}" for s in self.inputs)
        out = ", ".join(f"{s.name}:{s.dtype}{list(s.dims)}" for s in self.outputs)
        return (
            f"<RegisteredModel {self.name!r} v{self.version} ({self.framework}) "
            f"({sig}) -> ({out}) max_batch_size={self.config.max_batch_size}>"
        )

    def _repr_html_(self) -> str:
        return ModelTable([self])._repr_html_() + f"<pre>{html.escape(self.pbtxt)}</pre>"


def _batching_text(config: ModelConfig) -> str:
    if config.platform == "ensemble":
        return "ensemble"
    if config.HasField("sequence_batching"):
        return "sequence"
    if config.max_batch_size <= 0:
        return "none"
    text = f"max {config.max_batch_size}"
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        text += f", dynamic ({db.max_queue_delay_microseconds} us"
        if db.preferred_batch_size:
            text += f", preferred {list(db.preferred_batch_size)}"
        text += ")"
    return text


class ModelTable(list):
    """The list of registered models; renders as a table in notebooks."""

    COLUMNS = ("name", "versions", "framework", "inputs", "outputs", "batching", "instances")

    def rows(self) -> list[tuple[str, ...]]:
        rows = []
        for model in self:
            cfg = model.config
            rows.append(
                (
                    model.name,
                    ", ".join(str(v) for v in sorted(model.versions)),
                    model.framework,
                    "; ".join(f"{s.name} {s.dtype} {list(s.dims)}" for s in model.inputs),
                    "; ".join(f"{s.name} {s.dtype} {list(s.dims)}" for s in model.outputs),
                    _batching_text(cfg),
                    str(sum(g.count or 1 for g in cfg.instance_group) or 1),
                )
            )
        return rows

    def __repr__(self) -> str:
        rows = [self.COLUMNS, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.COLUMNS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines) if self else "(no models registered)"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in self.rows()
        )
        return f"<table class='nbserve-models'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Registry:
    """Models by name; thread-safe; emits RegistryEvents to subscribers."""

    def __init__(self) -> None:
        self._models: dict[str, RegisteredModel] = {}
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[RegistryEvent], None]] = []

    # --------------------------------------------------------------------- registration
    def register(
        self,
        obj: Any,
        name: str | None = None,
        version: int | None = None,
        inputs: Any = None,
        outputs: Any = None,
        example: Any = None,
        *,
        framework: str | None = None,
        **options: Any,
    ) -> RegisteredModel:
        """Adapt ``obj``, infer its signature and config, and add it as a new version.

        Args:
            obj: a Python callable, torch module, ONNX model/path, tree model, (tokenizer, model) pair,
                TensorRT engine, or an :class:`~nbserve.ensemble.Ensemble` of registered models.
            name: the model name; defaults to the object's ``__name__`` / class name.
            version: a version number; defaults to the next one (re-registering adds a version).
            inputs, outputs: TensorSpecs when they cannot be inferred (or to rename/relax dims).
            example: a batch of inputs (dict, array or tuple) used to infer the signature.
            framework: force a backend ("python", "torch", "onnx", "trees", "transformers", "tensorrt").
            **options: config options (``max_batch_size``, ``dynamic_batching``, ``instances``,
                ``instance_kind``, ``version_policy``, ``parameters``, ``sequence_batching``, ``config``)
                and backend options (e.g. ``batched=False`` for per-item Python functions).

        Returns:
            The RegisteredModel, whose ``latest`` is the new version.

        Raises:
            SignatureError: the signature cannot be inferred or does not match the declared one.
            ConfigError: an option Triton would reject.

        >>> import numpy as np, nbserve
        >>> reg = Registry()
        >>> m = reg.register(lambda x: x * 2, name="double", example=np.ones((2, 3), "float32"))
        >>> m.infer({"x": np.ones((1, 3), "float32")})["output_0"].tolist()
        [[2.0, 2.0, 2.0]]
        """
        name = validate_name(name if name is not None else _default_name(obj))
        if isinstance(obj, Ensemble):
            given = {k: v for k, v in dict(inputs=inputs, outputs=outputs, example=example, framework=framework).items()
                     if v is not None}
            return self.add(ensemble_entry(obj, self, name=name, version=self._version_for(name, version),
                                           options={**given, **options}))
        module = backend_for(obj, framework, model=name)
        config_options = {k: options.pop(k) for k in list(options) if k in _CONFIG_KEYS}
        max_batch_size = config_options.pop("max_batch_size", None)
        if max_batch_size is not None:  # checked before the backend runs the model with it
            check_max_batch_size(max_batch_size, model=name)
        # Bare names rename tensors without fixing their dtype or dims: backends infer those.
        if _names_only(inputs):
            options["input_names"], inputs = list(inputs), None
        if _names_only(outputs):
            options["output_names"], outputs = list(outputs), None
        adapted: Adapted = module.adapt(
            obj,
            name=name,
            inputs=to_specs(inputs, kind="input") if inputs is not None else None,
            outputs=to_specs(outputs, kind="output") if outputs is not None else None,
            example=example,
            max_batch_size=max_batch_size,
            options=options,
        )
        if options:
            raise ConfigError(
                f"unknown option{'s' if len(options) > 1 else ''} {', '.join(sorted(options))}",
                model=name,
                expected="config options: " + ", ".join(_CONFIG_KEYS),
                hint="check the spelling; Triton's names are used (max_queue_delay_microseconds, ...)",
            )
        config = _config_for(name, adapted, config_options)
        version = self._version_for(name, version)
        entry = ModelVersion(
            name=name,
            version=version,
            config=config,
            runner=adapted.runner,
            framework=adapted.framework,
            backend=module.name,
            obj=obj,
            device=adapted.device,
            options={"runner": adapted.runner, **adapted.writer_options},
            close=adapted.close,
        )
        return self.add(entry)

    def _version_for(self, name: str, version: int | None) -> int:
        """The version a registration gets: the one asked for, or the next one."""
        with self._lock:
            model = self._models.get(name)
            if version is None:
                version = max(model.versions) + 1 if model and model.versions else 1
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError("version must be an integer >= 1", model=name, got=repr(version),
                              hint="leave version out to add the next version, or pass version=1 or higher")
        return version

    def add(self, entry: ModelVersion) -> RegisteredModel:
        """Store a ready ModelVersion (used by register and by the repository reader)."""
        with self._lock:
            model = self._models.setdefault(entry.name, RegisteredModel(entry.name))
            replaced = model.versions.get(entry.version)
            model.versions[entry.version] = entry
        if replaced is not None and replaced.close is not None:
            replaced.close()
        self._emit(RegistryEvent("registered", entry.name, entry.version))
        return model

    # --------------------------------------------------------------------- lookup
    def get(self, name: str) -> RegisteredModel:
        with self._lock:
            model = self._models.get(name)
            known = sorted(self._models)
        if model is None:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            raise ModelNotFound(
                "no model registered under this name",
                model=name,
                expected=f"one of {known}" if known else None,
                hint=f"did you mean '{close[0]}'?" if close else "register it with nbserve.register(obj, name=...)",
            )
        return model

    def remove(self, name: str, version: int | None = None) -> None:
        model = self.get(name)
        with self._lock:
            if version is None:
                removed = list(model.versions.values())
                del self._models[name]
            else:
                removed = [model.get_version(version)]
                del model.versions[removed[0].version]
                if not model.versions:
                    del self._models[name]
        for entry in removed:
            if entry.close is not None:
                entry.close()
        self._emit(RegistryEvent("removed", name, version))

    def clear(self) -> None:
        for name in self.names():
            self.remove(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def models(self) -> ModelTable:
        with self._lock:
            return ModelTable(self._models[n] for n in sorted(self._models))

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[RegisteredModel]:
        return iter(self.models())

    def __len__(self) -> int:
        return len(self._models)

    # --------------------------------------------------------------------- events
    def subscribe(self, callback: Callable[[RegistryEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on every change; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, event: RegistryEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(event)


_CONFIG_KEYS = (
    "max_batch_size",
    "dynamic_batching",
    "sequence_batching",
    "instances",
    "instance_kind",
    "version_policy",
    "parameters",
    "config",
)


def _names_only(tensors: Any) -> bool:
    return isinstance(tensors, (list, tuple)) and bool(tensors) and all(isinstance(t, str) for t in tensors)


def _default_name(obj: Any) -> str:
    for attr in ("__name__", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value and value != "<lambda>":
            return value
    cls = type(obj).__name__
    if cls in ("function", "str", "PosixPath", "tuple", "bytes", "ModelProto"):
        raise ConfigError(
            f"cannot pick a name for a {cls}",
            hint="pass name='my_model' to register",
        )
    return cls.lower()


def _config_for(name: str, adapted: Adapted, options: dict[str, Any]) -> ModelConfig:
    options = dict(options)
    max_batch_size = adapted.max_batch_size
    # Serving from a notebook means dynamic batching: Triton's default (no delay) unless told.
    if max_batch_size > 0 and "dynamic_batching" not in options and "sequence_batching" not in options:
        options["dynamic_batching"] = True
    if options.get("dynamic_batching") is False:
        options.pop("dynamic_batching")
    if "instances" not in options:
        options["instances"] = 1
    options.setdefault("instance_kind", "gpu" if adapted.device == "gpu" else "cpu")
    parameters = dict(adapted.parameters)
    parameters.update(options.pop("parameters", None) or {})
    config = build_config(
        name=name,
        inputs=adapted.inputs,
        outputs=adapted.outputs,
        max_batch_size=max_batch_size,
        platform=adapted.platform,
        backend=adapted.backend,
        parameters=parameters,
        **options,
    )
    if adapted.input_reshapes or adapted.output_reshapes:
        config = with_reshapes(config, adapted.input_reshapes, adapted.output_reshapes)
    return config


default_registry = Registry()


def entry_from_adapted(name: str, version: int, config: ModelConfig, adapted: Adapted, module_name: str) -> ModelVersion:
    """A ModelVersion for a model read from files (no live object)."""
    return ModelVersion(
        name=name,
        version=version,
        config=config,
        runner=adapted.runner,
        framework=adapted.framework,
        backend=module_name,
        device=adapted.device,
        options={"runner": adapted.runner},
        close=adapted.close,
    )


def backend_module(entry: ModelVersion) -> Any:
    return backend(entry.backend)
