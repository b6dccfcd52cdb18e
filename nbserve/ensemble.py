"""Ensembles: Triton's ``ensemble_scheduling`` steps, checked and run as a DAG.

This module holds the step-by-step runner used when an ensemble is read from a repository (for
example the tokenizer + model pair the transformers backend writes) and the writer for ensemble
configs. Steps run in dependency order, each through its model's runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ModelConfig
from .errors import ConfigError, InferenceError

__all__ = ["ensemble_runner", "step_order", "write"]

name = "ensemble"


def step_order(config: ModelConfig) -> list[Any]:
    """Steps in an order where every step's inputs exist before it runs; rejects cycles and gaps."""
    available = {t.name for t in config.input}
    pending = list(config.ensemble_scheduling.step)
    ordered = []
    while pending:
        ready = [s for s in pending if all(v in available for v in s.input_map.values())]
        if not ready:
            missing = sorted({v for s in pending for v in s.input_map.values()} - available)
            raise ConfigError(
                "ensemble steps read tensors that no ensemble input or earlier step writes (or form a cycle)",
                model=config.name,
                got=missing,
                hint="connect each step input to an ensemble input or to another step's output",
            )
        for step in ready:
            pending.remove(step)
            ordered.append(step)
            available.update(step.output_map.values())
    return ordered


def ensemble_runner(config: ModelConfig, registry: Any) -> Any:
    """A runner that executes the ensemble's steps through the registry's models."""
    order = step_order(config)
    outputs = [t.name for t in config.output]

    def run(inputs: dict[str, Any]) -> dict[str, Any]:
        tensors = dict(inputs)
        for step in order:
            model = registry.get(step.model_name).get_version(step.model_version if step.model_version > 0 else None)
            step_inputs = {model_input: tensors[tensor] for model_input, tensor in step.input_map.items()}
            try:
                result = model.runner(step_inputs)
            except Exception as exc:
                raise InferenceError(
                    f"ensemble step '{step.model_name}' failed: {exc}", model=config.name
                ) from exc
            for model_output, tensor in step.output_map.items():
                if model_output not in result:
                    raise InferenceError(
                        f"ensemble step '{step.model_name}' did not produce output '{model_output}'",
                        model=config.name,
                    )
                tensors[tensor] = result[model_output]
        return {name: tensors[name] for name in outputs}

    return run


def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    """Ensembles have no files: Triton only needs the (empty) version folder and the config."""
    version_dir.mkdir(parents=True, exist_ok=True)
    return config
