"""Ensembles: pipelines of registered models, as Triton's ``ensemble_scheduling``.

An :class:`Ensemble` names its inputs and outputs and lists steps; each step runs one registered
model and maps the model's inputs and outputs to *ensemble tensors* (Triton's ``input_map`` /
``output_map``)::

    ens = Ensemble("readability", max_batch_size=64)
    ens.input("text", "BYTES", [1])
    ens.step("preprocess", inputs={"text": "text"}, outputs={"features": "feats"})
    ens.step("trees", inputs={"input__0": "feats"}, outputs={"output__0": "score"})
    ens.output("score")
    nbserve.register(ens)

:meth:`Ensemble.check` validates the graph as Triton does when it loads an ensemble, and more: every
message names the step, the tensor and the fix, and an output that nothing reads is a warning (it is
left out of the written config, which Triton would otherwise refuse). The server runs the steps as a
DAG through each model's own batcher (:mod:`nbserve.serving.ensemble_scheduler`); :func:`ensemble_runner`
runs them one after another for direct calls without a server. The repository writer writes an
ensemble as its config and an empty version folder, which is all Triton needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ModelConfig, config_from, mc, validate, validate_name
from .errors import ConfigError, InferenceError, InvalidInput, ModelNotFound, ModelNotReady, NbserveError
from .tensors import TensorSpec, config_dtype, triton_dtype

__all__ = [
    "Ensemble",
    "Step",
    "Plan",
    "PlannedStep",
    "plan",
    "ensemble_runner",
    "step_order",
    "write",
]

name = "ensemble"

# Step references that mean "the ensemble's own inputs/outputs" in edge_problem and connect.
_BOUNDARY = (None, "input", "inputs", "output", "outputs", "ensemble")


@dataclasses.dataclass
class Step:
    """One step: run ``model`` (``version`` -1 is the latest) on ensemble tensors.

    ``inputs`` maps each model input name to the ensemble tensor it reads; ``outputs`` maps model
    output names to the ensemble tensors they write (Triton's ``input_map`` / ``output_map``).
    """

    model: str
    version: int = -1
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Port:
    """A tensor end of an edge: its spec, whether its model batches, and who it belongs to."""

    spec: TensorSpec
    batching: bool
    owner: str  # "ensemble input 'text'", "step 'bert' output 'logits'", ...


def _full_dims(dims: tuple[int, ...], batching: bool) -> tuple[int, ...]:
    return (-1, *dims) if batching else tuple(dims)


def _dims_fit(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def _shape_text(port: _Port) -> str:
    return f"{port.spec.dtype} {list(_full_dims(port.spec.dims, port.batching))}"


class Ensemble:
    """A pipeline of registered models, served and exported as a Triton ensemble.

    Args:
        name: the ensemble's model name.
        max_batch_size: the most rows one request may carry (0: requests are not batched; their
            tensors are passed to the steps whole). Every step's model that batches must accept at
            least this many rows.

    Steps, inputs and outputs are added with :meth:`input`, :meth:`step` and :meth:`output`, which
    return the ensemble so that calls chain.

    >>> import numpy as np, nbserve
    >>> reg = nbserve.Registry()
    >>> _ = reg.register(lambda x: x * 2, name="double", example=np.ones((1, 2), "float32"))
    >>> _ = reg.register(lambda x: x + 1, name="inc", example=np.ones((1, 2), "float32"))
    >>> ens = (Ensemble("pipeline", max_batch_size=8)
    ...        .input("x", "FP32", [2])
    ...        .step("double", inputs={"x": "x"}, outputs={"output_0": "doubled"})
    ...        .step("inc", inputs={"x": "doubled"}, outputs={"output_0": "y"})
    ...        .output("y"))
    >>> model = reg.register(ens)
    >>> model.infer({"x": np.ones((1, 2), "float32")})["y"].tolist()
    [[3.0, 3.0]]
    """

    def __init__(self, name: str, max_batch_size: int = 64) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
            raise ConfigError("max_batch_size must be an integer >= 0", model=name, got=repr(max_batch_size),
                              hint="Ensemble(name, max_batch_size=64); 0 turns batching off")
        self.name = validate_name(name)
        self.max_batch_size = max_batch_size
        self._inputs: dict[str, TensorSpec] = {}
        # Output declarations: dtype and dims may be None until resolved from the producing step.
        self._outputs: dict[str, tuple[str | None, tuple[int, ...] | None]] = {}
        self._steps: list[Step] = []

    # --------------------------------------------------------------------- building
    def input(self, name: str, dtype: Any, dims: Any, *, optional: bool = False) -> Ensemble:
        """Declare an ensemble input.

        Args:
            name: the input's name, which is also the ensemble tensor steps read it by.
            dtype: a Triton data type ("FP32", "BYTES", ...) or a NumPy dtype.
            dims: its shape without the batch dimension when the ensemble batches (-1: any size).
            optional: requests may leave it out (as Triton's ``optional`` input).

        Returns:
            The ensemble, so that calls chain.

        Raises:
            ConfigError: a second input with that name, an unknown data type or invalid dims.
        """
        spec = TensorSpec(name, dims, dtype, optional=optional)
        if name in self._inputs:
            raise ConfigError(f"ensemble input '{name}' is declared twice", model=self.name, tensor=name,
                              hint="give every ensemble input a distinct name")
        self._inputs[name] = spec
        return self

    def output(self, name: str, dtype: Any = None, dims: Any = None) -> Ensemble:
        """Declare an ensemble output: the ensemble tensor of that name is returned to the client.

        Args:
            name: the ensemble tensor a step output writes.
            dtype, dims: by default those of the model output that writes it (resolved against the
                registry when the config is built); when given, they are checked against it.

        Returns:
            The ensemble, so that calls chain.
        """
        if name in self._outputs:
            raise ConfigError(f"ensemble output '{name}' is declared twice", model=self.name, tensor=name,
                              hint="give every ensemble output a distinct name")
        resolved_dtype = triton_dtype(dtype) if dtype is not None else None
        resolved_dims = TensorSpec(name, dims, "FP32").dims if dims is not None else None
        self._outputs[name] = (resolved_dtype, resolved_dims)
        return self

    def step(self, model: Any, inputs: Mapping[str, str] | None = None, outputs: Mapping[str, str] | None = None,
             version: int = -1) -> Ensemble:
        """Add a step running ``model`` (a name or a registered model) on ensemble tensors.

        Args:
            model: the model's name, or the RegisteredModel that ``nbserve.register`` returned.
            inputs: model input name -> ensemble tensor it reads.
            outputs: model output name -> ensemble tensor it writes.
            version: the model version; -1 (default) is the latest, as Triton's ``model_version``.

        Returns:
            The ensemble, so that calls chain.
        """
        model_name = model if isinstance(model, str) else getattr(model, "name", None)
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError("a step needs a model name", model=self.name, got=repr(model),
                              hint='ens.step("bert", inputs={...}, outputs={...})')
        if isinstance(version, bool) or not isinstance(version, int) or (version < 1 and version != -1):
            raise ConfigError("a step's version must be -1 (latest) or a version number >= 1", model=self.name,
                              got=repr(version), hint=f'ens.step("{model_name}", ..., version=-1)')
        self._steps.append(Step(model_name, version, _str_map(inputs, "inputs", self.name),
                                _str_map(outputs, "outputs", self.name)))
        return self

    def connect(self, src_step: Any, src_tensor: str, dst_step: Any, dst_tensor: str, registry: Any = None) -> str:
        """Connect a step output (or an ensemble input) to a step input (or an ensemble output).

        Args:
            src_step: a step (index, model name or Step), or None for an ensemble input.
            src_tensor: the model output name of ``src_step`` (the ensemble input name when None).
            dst_step: a step (index, model name or Step), or None for an ensemble output.
            dst_tensor: the model input name of ``dst_step`` (the ensemble output name when None).
            registry: where the step models are registered (default: nbserve's registry).

        Returns:
            The name of the ensemble tensor that now carries the connection.

        Raises:
            ConfigError: the connection is invalid (see :meth:`edge_problem`).
        """
        problem = self.edge_problem(src_step, src_tensor, dst_step, dst_tensor, registry)
        if problem is not None:
            raise ConfigError(problem, model=self.name)
        src = self._step_index(src_step)
        dst = self._step_index(dst_step)
        if src is None:
            tensor = src_tensor
        else:
            tensor = self._steps[src].outputs.get(src_tensor)
            if dst is None and tensor != dst_tensor:
                if tensor is not None:
                    self._rename_tensor(tensor, dst_tensor)
                tensor = self._steps[src].outputs[src_tensor] = dst_tensor
            elif tensor is None:
                tensor = self._fresh_tensor_name(src_tensor, self._steps[src].model)
                self._steps[src].outputs[src_tensor] = tensor
        if dst is None:
            if dst_tensor not in self._outputs:
                self._outputs[dst_tensor] = (None, None)
        else:
            self._steps[dst].inputs[dst_tensor] = tensor
        return tensor

    def _rename_tensor(self, old: str, new: str) -> None:
        for step in self._steps:
            for key, value in list(step.inputs.items()):
                if value == old:
                    step.inputs[key] = new
            for key, value in list(step.outputs.items()):
                if value == old:
                    step.outputs[key] = new

    def _fresh_tensor_name(self, wanted: str, model: str) -> str:
        taken = set(self._inputs) | set(self._outputs) | {t for s in self._steps for t in (*s.inputs.values(), *s.outputs.values())}
        for candidate in (wanted, f"{model}_{wanted}"):
            if candidate not in taken:
                return candidate
        number = 2
        while f"{model}_{wanted}_{number}" in taken:
            number += 1
        return f"{model}_{wanted}_{number}"

    # --------------------------------------------------------------------- views
    @property
    def steps(self) -> list[Step]:
        """The steps, in the order they were added (the list itself: edit it to edit the ensemble)."""
        return self._steps

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs.values())

    @property
    def outputs(self) -> list[TensorSpec]:
        """The outputs, with dtype and dims resolved from the steps' models in nbserve's registry."""
        return self._resolved_outputs(None)

    def _resolved_outputs(self, registry: Any) -> list[TensorSpec]:
        specs = []
        for tensor, (dtype, dims) in self._outputs.items():
            if dtype is None or dims is None:
                port = self._producer_port(tensor, _registry(registry))
                if port is None:
                    writer = self._writer_text(tensor)
                    raise ConfigError(
                        f"the dtype and dims of ensemble output '{tensor}' cannot be resolved: {writer}",
                        model=self.name, tensor=tensor,
                        hint=f"register that step's model, connect a step output to '{tensor}', or declare "
                        f'ens.output("{tensor}", "FP32", [1]) with its dtype and dims',
                    )
                dtype = dtype or port.spec.dtype
                dims = dims if dims is not None else self._ensemble_dims(port)
            specs.append(TensorSpec(tensor, dims, dtype))
        return specs

    def _ensemble_dims(self, port: _Port) -> tuple[int, ...]:
        """A port's dims as an ensemble tensor: batch dimension dropped when the ensemble batches."""
        full = _full_dims(port.spec.dims, port.batching)
        if self.max_batch_size > 0:
            return full[1:] if len(full) > 1 else (1,)
        return full

    def _writer_text(self, tensor: str) -> str:
        writers = self._writers().get(tensor, [])
        if not writers:
            return "no step writes it"
        index, model_output = writers[0]
        return f"{self._label(index)} writes it from model output '{model_output}'"

    def __repr__(self) -> str:
        steps = ", ".join(s.model for s in self._steps)
        return (f"<Ensemble {self.name!r} inputs={list(self._inputs)} steps=[{steps}] outputs={list(self._outputs)} "
                f"max_batch_size={self.max_batch_size}>")

    # --------------------------------------------------------------------- step references
    def _step_index(self, ref: Any) -> int | None:
        """Index of the step ``ref`` names: an index, a model name, a Step; None for the boundary."""
        if isinstance(ref, Step):
            for i, step in enumerate(self._steps):
                if step is ref:
                    return i
            raise ConfigError("this Step is not part of the ensemble", model=self.name, got=repr(ref),
                              hint="pass a step from ens.steps, its index or its model name")
        if isinstance(ref, int) and not isinstance(ref, bool):
            if not 0 <= ref < len(self._steps):
                raise ConfigError("no step with this index", model=self.name, got=ref,
                                  expected=f"0..{len(self._steps) - 1}" if self._steps else "no steps yet",
                                  hint="steps are numbered from 0 in the order ens.step() added them")
            return ref
        if isinstance(ref, str):
            matches = [i for i, step in enumerate(self._steps) if step.model == ref]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise ConfigError(f"model '{ref}' runs in several steps {matches}", model=self.name,
                                  hint="refer to the step by its index in ens.steps")
        if ref in _BOUNDARY or ref == self.name:
            return None
        known = [s.model for s in self._steps]
        close = difflib.get_close_matches(str(ref), known, n=1)
        raise ConfigError("no step runs this model", model=self.name, got=repr(ref), expected=f"one of {known}",
                          hint=f"did you mean '{close[0]}'?" if close else "add it with ens.step(...) first")

    def _label(self, index: int) -> str:
        model = self._steps[index].model
        if sum(1 for s in self._steps if s.model == model) > 1:
            return f"step #{index} '{model}'"
        return f"step '{model}'"

    def _unused_outputs(self) -> set[tuple[int, str]]:
        """(step index, model output) of step outputs mapped to a tensor nothing reads or returns."""
        readers = self._readers()
        return {(i, o) for i, step in enumerate(self._steps) for o, t in step.outputs.items()
                if t not in readers and t not in self._outputs and t not in self._inputs}

    def _writers(self) -> dict[str, list[tuple[int, str]]]:
        """Ensemble tensor -> [(step index, model output)] of every step output mapped to it."""
        writers: dict[str, list[tuple[int, str]]] = {}
        for i, step in enumerate(self._steps):
            for model_output, tensor in step.outputs.items():
                writers.setdefault(tensor, []).append((i, model_output))
        return writers

    def _readers(self) -> dict[str, list[tuple[int, str]]]:
        readers: dict[str, list[tuple[int, str]]] = {}
        for i, step in enumerate(self._steps):
            for model_input, tensor in step.inputs.items():
                readers.setdefault(tensor, []).append((i, model_input))
        return readers

    # --------------------------------------------------------------------- model lookups
    def _model_config(self, index: int, registry: Any) -> ModelConfig | None:
        step = self._steps[index]
        if registry is None or step.model not in registry:
            return None
        try:
            return registry.get(step.model).get_version(None if step.version == -1 else step.version).config
        except ModelNotFound:
            return None

    def _step_port(self, index: int, tensor_name: str, kind: str, registry: Any) -> _Port | None:
        config = self._model_config(index, registry)
        if config is None:
            return None
        for t in (config.input if kind == "input" else config.output):
            if t.name == tensor_name:
                spec = TensorSpec(t.name, list(t.dims), mc.DataType.Name(t.data_type), optional=kind == "input" and t.optional)
                return _Port(spec, config.max_batch_size > 0, f"{self._label(index)} {kind} '{t.name}'")
        return None

    def _input_port(self, tensor: str) -> _Port | None:
        spec = self._inputs.get(tensor)
        if spec is None:
            return None
        return _Port(spec, self.max_batch_size > 0, f"ensemble input '{tensor}'")

    def _producer_port(self, tensor: str, registry: Any) -> _Port | None:
        if tensor in self._inputs:
            return self._input_port(tensor)
        writers = self._writers().get(tensor)
        if not writers:
            return None
        index, model_output = writers[0]
        return self._step_port(index, model_output, "output", registry)

    # --------------------------------------------------------------------- validation
    def check(self, registry: Any = None) -> list[str]:
        """Validate the ensemble against the registered models, as Triton does when loading it, and more.

        Checks that every step's model exists and batches at least ``max_batch_size`` rows; every
        model input is connected once; every step input comes from an ensemble input or an earlier
        step's output; every tensor is written exactly once; data types and shapes (batch dimension
        included) agree on every edge; the steps form no cycle; every ensemble input is read and every
        ensemble output is written.

        Args:
            registry: where the step models are registered (default: nbserve's registry).

        Returns:
            Warnings: step outputs that nothing reads (they are left out of the config).

        Raises:
            ConfigError: the first problem, naming the step, the tensor and the fix. Its ``problems``
                attribute lists every problem found.
        """
        problems, notes = self._problems(_registry(registry))
        if problems:
            first = problems[0]
            first.problems = problems
            if len(problems) > 1:
                more = "; ".join(str(p) for p in problems[1:4])
                first.args = (f"{first}  (and {len(problems) - 1} more: {more}{' ...' if len(problems) > 4 else ''})",)
            raise first
        return notes

    def _problems(self, registry: Any) -> tuple[list[ConfigError], list[str]]:
        problems: list[ConfigError] = []
        notes: list[str] = []

        def problem(what: str, *, tensor: str | None = None, expected: Any = None, got: Any = None,
                    hint: str | None = None) -> None:
            problems.append(ConfigError(what, model=self.name, tensor=tensor, expected=expected, got=got, hint=hint))

        if not self._inputs:
            problem("an ensemble needs at least one input", hint='declare one with ens.input("x", "FP32", [4])')
        if not self._steps:
            problem("an ensemble needs at least one step",
                    hint='add one with ens.step("model", inputs={...}, outputs={...})')
        if not self._outputs:
            problem("an ensemble needs at least one output", hint='declare one with ens.output("y")')

        writers, readers = self._writers(), self._readers()
        for i, step in enumerate(self._steps):
            label = self._label(i)
            if step.model == self.name:
                problem(f"{label} runs the ensemble itself", hint="a step must run another model")
            if not step.inputs:
                problem(f"{label} reads no tensor",
                        hint=f'map its inputs: ens.step("{step.model}", inputs={{"model_input": "ensemble_tensor"}}, ...)')
            if not step.outputs:
                problem(f"{label} writes no tensor",
                        hint=f'map its outputs: ens.step("{step.model}", ..., outputs={{"model_output": "ensemble_tensor"}})')

        # Every tensor is written once: by the request (ensemble inputs) or by one step output.
        for tensor, written_by in writers.items():
            if tensor in self._inputs:
                index, model_output = written_by[0]
                problem(f"{self._label(index)} writes '{tensor}', which is an ensemble input", tensor=tensor,
                        hint=f"map output '{model_output}' to another tensor name")
            elif len(written_by) > 1:
                names = " and ".join(f"{self._label(i)} (output '{o}')" for i, o in written_by)
                problem(f"{names} both write this tensor", tensor=tensor, expected="exactly one writer",
                        got=len(written_by), hint="map one of those outputs to another tensor name")

        available = set(self._inputs) | set(writers)
        for tensor, read_by in readers.items():
            if tensor not in available:
                index, model_input = read_by[0]
                close = difflib.get_close_matches(tensor, sorted(available), n=1)
                problem(f"{self._label(index)} reads it (input '{model_input}') but no ensemble input or step output "
                        "writes it", tensor=tensor,
                        hint=f"did you mean '{close[0]}'?" if close else
                        f'declare it with ens.input("{tensor}", dtype, dims) or map a step output to it')

        cycle = self._cycle()
        if cycle:
            path = " -> ".join(self._label(i) for i in cycle)
            problem(f"the steps form a cycle: {path}",
                    hint="a step may only read ensemble inputs and outputs of steps that do not depend on it")

        for tensor in self._inputs:
            if tensor not in readers:
                problem("ensemble input is not read by any step", tensor=tensor,
                        hint=f'connect it to a step input, or remove ens.input("{tensor}", ...)')
        for tensor in self._outputs:
            if tensor not in writers and tensor not in self._inputs:
                close = difflib.get_close_matches(tensor, sorted(writers), n=1)
                problem("ensemble output is not written by any step", tensor=tensor,
                        hint=f"did you mean '{close[0]}'?" if close else
                        f'map a step output to it: ens.step(..., outputs={{"model_output": "{tensor}"}})')
        unused = self._unused_outputs()
        for i, step in enumerate(self._steps):
            if step.outputs and all((i, o) in unused for o in step.outputs):
                problem(f"{self._label(i)} writes nothing that is used: no step input or ensemble output reads "
                        f"{', '.join(repr(t) for t in step.outputs.values())}",
                        hint="connect one of its outputs to a step input or an ensemble output, or remove the step")
        for index, model_output in sorted(unused):
            if all((index, o) in unused for o in self._steps[index].outputs):
                continue  # a problem above, not a warning
            tensor = self._steps[index].outputs[model_output]
            notes.append(f"{self._label(index)} output '{model_output}' -> tensor '{tensor}' is not used by any "
                         "step or ensemble output; it is left out of the config (declare "
                         f'ens.output("{tensor}") to return it)')

        if registry is not None:
            self._check_models(registry, problem)
        return problems, notes

    def _check_models(self, registry: Any, problem: Any) -> None:
        """The checks that need the steps' model configs."""
        for i, step in enumerate(self._steps):
            label = self._label(i)
            if step.model not in registry:
                known = registry.names()
                close = difflib.get_close_matches(step.model, known, n=1)
                problem(f"{label} runs model '{step.model}', which is not registered",
                        expected=f"one of {known}" if known else None,
                        hint=f"did you mean '{close[0]}'?" if close else "register it first with nbserve.register(obj, name=...)")
                continue
            registered = registry.get(step.model)
            if step.version != -1 and step.version not in registered.versions:
                problem(f"{label} asks for version {step.version} of model '{step.model}', which is not registered",
                        expected=f"one of {sorted(registered.versions)}", got=step.version,
                        hint="use version=-1 for the latest")
                continue
            config = self._model_config(i, registry)
            if config.max_batch_size != 0 and config.max_batch_size < self.max_batch_size:
                problem(f"the ensemble takes up to {self.max_batch_size} rows per request but {label} (model "
                        f"'{step.model}') takes at most {config.max_batch_size}",
                        hint=f"use Ensemble(..., max_batch_size={config.max_batch_size}) or register '{step.model}' "
                        f"with max_batch_size={self.max_batch_size}")
            if config.HasField("sequence_batching"):
                problem(f"{label} runs stateful model '{step.model}' (sequence_batching), and nbserve's ensembles "
                        "pass no sequence ids to their steps",
                        hint=f"call '{step.model}' directly with its sequence_id, sequence_start and sequence_end")
            if config.platform == "ensemble" and self._contains(step.model, registry, set()):
                problem(f"{label} runs ensemble '{step.model}', which runs this ensemble",
                        hint="ensembles cannot call each other in a circle")
            model_inputs = {t.name: t for t in config.input}
            model_outputs = [t.name for t in config.output]
            for model_input in step.inputs:
                if model_input not in model_inputs:
                    problem(f"{label} maps input '{model_input}', which model '{step.model}' does not have",
                            expected=f"inputs {list(model_inputs)}", got=model_input,
                            hint=_did_you_mean(model_input, model_inputs))
            for model_input, t in model_inputs.items():
                if model_input not in step.inputs and not t.optional:
                    problem(f"{label}: input '{model_input}' of model '{step.model}' is not connected",
                            hint=f'map it to an ensemble tensor: inputs={{"{model_input}": "tensor", ...}}')
            for model_output in step.outputs:
                if model_output not in model_outputs:
                    problem(f"{label} maps output '{model_output}', which model '{step.model}' does not have",
                            expected=f"outputs {model_outputs}", got=model_output,
                            hint=_did_you_mean(model_output, model_outputs))
        for tensor, reads in self._readers().items():
            source = self._producer_port(tensor, registry)
            if source is None:
                continue
            for index, model_input in reads:
                target = self._step_port(index, model_input, "input", registry)
                if target is not None:
                    mismatch = _mismatch(source, target)
                    if mismatch:
                        problem(mismatch, tensor=tensor, hint=_mismatch_hint(source, target))
        for tensor, (dtype, dims) in self._outputs.items():
            source = self._producer_port(tensor, registry)
            if source is None or (dtype is None and dims is None):
                continue
            declared = _Port(TensorSpec(tensor, dims if dims is not None else self._ensemble_dims(source),
                                        dtype or source.spec.dtype), self.max_batch_size > 0, f"ensemble output '{tensor}'")
            mismatch = _mismatch(source, declared)
            if mismatch:
                problem(mismatch, tensor=tensor,
                        hint=f'declare ens.output("{tensor}") without dtype and dims to take them from the step')

    def _contains(self, model: str, registry: Any, seen: set[str]) -> bool:
        """Whether ensemble ``model`` (registered) runs this ensemble, directly or through others."""
        if model in seen or model not in registry:
            return False
        seen.add(model)
        for step in registry.get(model).config.ensemble_scheduling.step:
            if step.model_name == self.name:
                return True
            if step.model_name in registry and registry.get(step.model_name).config.platform == "ensemble":
                if self._contains(step.model_name, registry, seen):
                    return True
        return False

    def _cycle(self) -> list[int] | None:
        """Step indices along a cycle (first repeated at the end), or None."""
        writers = self._writers()
        after = {i: sorted({w for t in s.inputs.values() for w, _ in writers.get(t, ())}) for i, s in enumerate(self._steps)}
        state: dict[int, int] = {}  # 1: on the current path, 2: done

        def visit(i: int, path: list[int]) -> list[int] | None:
            state[i] = 1
            path.append(i)
            for j in after[i]:
                if state.get(j) == 1:
                    return path[path.index(j):] + [j]
                if state.get(j) is None:
                    found = visit(j, path)
                    if found:
                        return found
            path.pop()
            state[i] = 2
            return None

        for i in range(len(self._steps)):
            if state.get(i) is None:
                found = visit(i, [])
                if found:
                    # Written as data flows: producer -> consumer.
                    return list(reversed(found))
        return None

    def edge_problem(self, src_step: Any, src_tensor: str, dst_step: Any, dst_tensor: str,
                     registry: Any = None) -> str | None:
        """Why one connection would be invalid, or None when it is fine.

        The widget asks this for every edge as it is drawn. The connection goes from ``src_tensor``,
        an output of step ``src_step`` (an ensemble input when ``src_step`` is None), to
        ``dst_tensor``, an input of step ``dst_step`` (an ensemble output when ``dst_step`` is None).
        Steps are given by index, model name or Step.

        Returns:
            A message naming the problem and the fix (data type or shape mismatch, batch dimension
            mismatch, an input already connected, a tensor already written, a cycle), or None.
        """
        registry = _registry(registry)
        try:
            src = self._step_index(src_step)
            dst = self._step_index(dst_step)
        except ConfigError as exc:
            return str(exc)
        # The source end.
        if src is None:
            source = self._input_port(src_tensor)
            if source is None:
                return (f"there is no ensemble input '{src_tensor}': declare it with "
                        f'ens.input("{src_tensor}", dtype, dims) first')
            tensor = src_tensor
        else:
            config = self._model_config(src, registry)
            if config is None:
                return f"{self._label(src)} runs model '{self._steps[src].model}', which is not registered: register it first"
            source = self._step_port(src, src_tensor, "output", registry)
            if source is None:
                names = [t.name for t in config.output]
                return (f"model '{self._steps[src].model}' has no output '{src_tensor}': "
                        f"its outputs are {names}{_did_you_mean_suffix(src_tensor, names)}")
            tensor = self._steps[src].outputs.get(src_tensor)
            if dst is None and tensor is not None and tensor != dst_tensor and tensor in self._outputs:
                return (f"output '{src_tensor}' of {self._label(src)} already writes ensemble output '{tensor}', and a "
                        f"model output writes one tensor: connect '{tensor}' instead, or remove it first")
        # The destination end.
        if dst is None:
            if dst_tensor in self._inputs and src is not None:
                return f"'{dst_tensor}' is an ensemble input; a step cannot write it: name the ensemble output differently"
            if src is None and dst_tensor != src_tensor:
                return (f"an ensemble input passed straight through keeps its name: connect it to an ensemble "
                        f"output named '{src_tensor}'")
            others = [(i, o) for i, o in self._writers().get(dst_tensor, []) if (i, o) != (src, src_tensor)]
            if others:
                i, o = others[0]
                return (f"ensemble output '{dst_tensor}' is already written by {self._label(i)} (output '{o}'): "
                        "remove that connection first, or name this output differently")
            dtype, dims = self._outputs.get(dst_tensor, (None, None))
            if dtype is None and dims is None:
                return None
            target = _Port(TensorSpec(dst_tensor, dims if dims is not None else self._ensemble_dims(source),
                                      dtype or source.spec.dtype), self.max_batch_size > 0, f"ensemble output '{dst_tensor}'")
        else:
            dst_config = self._model_config(dst, registry)
            if dst_config is None:
                return f"{self._label(dst)} runs model '{self._steps[dst].model}', which is not registered: register it first"
            target = self._step_port(dst, dst_tensor, "input", registry)
            if target is None:
                names = [t.name for t in dst_config.input]
                return (f"model '{self._steps[dst].model}' has no input '{dst_tensor}': "
                        f"its inputs are {names}{_did_you_mean_suffix(dst_tensor, names)}")
            connected = self._steps[dst].inputs.get(dst_tensor)
            if connected is not None and (tensor is None or connected != tensor):
                return (f"input '{dst_tensor}' of {self._label(dst)} is already connected to tensor '{connected}': "
                        "remove that connection first (a model input reads exactly one tensor)")
            if src is not None and self._reaches(dst, src):
                if dst == src:
                    return f"{self._label(src)} cannot read its own output: that would make a cycle"
                return (f"connecting {self._label(src)} to {self._label(dst)} would make a cycle: "
                        f"{self._label(dst)} already feeds {self._label(src)}")
        mismatch = _mismatch(source, target)
        if mismatch:
            return f"{mismatch}. Fix: {_mismatch_hint(source, target)}"
        return None

    def _reaches(self, start: int, goal: int) -> bool:
        """Whether data flows from step ``start`` to step ``goal`` (or they are the same step)."""
        readers = self._readers()
        seen, todo = set(), [start]
        while todo:
            i = todo.pop()
            if i == goal:
                return True
            if i in seen:
                continue
            seen.add(i)
            for tensor in self._steps[i].outputs.values():
                todo.extend(j for j, _ in readers.get(tensor, ()))
        return False

    # --------------------------------------------------------------------- the Triton config
    def to_config(self, registry: Any = None, *, name: str | None = None) -> ModelConfig:
        """The Triton config: ``platform: "ensemble"`` with ``ensemble_scheduling``, validated.

        Args:
            registry: where the step models are registered (default: nbserve's registry).
            name: the model name to write (default: the ensemble's name).

        Raises:
            ConfigError: see :meth:`check`.
        """
        registry = _registry(registry)
        self.check(registry)
        unused = self._unused_outputs()
        config = ModelConfig(name=validate_name(name or self.name), platform="ensemble", max_batch_size=self.max_batch_size)
        for spec in self._inputs.values():
            tensor = config.input.add(name=spec.name, data_type=config_dtype(spec.dtype), dims=list(spec.dims))
            if spec.optional:
                tensor.optional = True
        for spec in self._resolved_outputs(registry):
            config.output.add(name=spec.name, data_type=config_dtype(spec.dtype), dims=list(spec.dims))
        for i, step in enumerate(self._steps):
            entry = config.ensemble_scheduling.step.add(model_name=step.model, model_version=step.version)
            entry.input_map.update(step.inputs)
            entry.output_map.update({o: t for o, t in step.outputs.items() if (i, o) not in unused})
        return validate(config)

    @classmethod
    def from_config(cls, config: Any) -> Ensemble:
        """An Ensemble from a Triton ensemble config (a ModelConfig, ``config.pbtxt`` text or a dict).

        Raises:
            ConfigError: the config is not an ensemble.
        """
        config = config_from(config)
        if config.platform != "ensemble" or not config.HasField("ensemble_scheduling"):
            raise ConfigError("the config is not an ensemble", model=config.name or None,
                              expected='platform: "ensemble" with ensemble_scheduling',
                              got=f"platform={config.platform!r} backend={config.backend!r}",
                              hint="read ensembles only; other models are registered with nbserve.register")
        ens = cls(config.name, max_batch_size=config.max_batch_size)
        for t in config.input:
            ens.input(t.name, mc.DataType.Name(t.data_type), list(t.dims), optional=t.optional)
        for t in config.output:
            ens.output(t.name, mc.DataType.Name(t.data_type), list(t.dims))
        for step in config.ensemble_scheduling.step:
            ens.step(step.model_name, dict(step.input_map), dict(step.output_map),
                     version=step.model_version if step.model_version > 0 else -1)
        return ens


def _str_map(value: Mapping[str, str] | None, what: str, model: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                 for k, v in value.items()):
        raise ConfigError(f"a step's {what} must map model tensor names to ensemble tensor names", model=model,
                          got=repr(value), hint=f'{what}={{"model_tensor": "ensemble_tensor"}}')
    return dict(value)


def _did_you_mean(name: str, names: Any) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f"did you mean '{close[0]}'?" if close else "use the model's own tensor names (see nbserve.models())"


def _did_you_mean_suffix(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _mismatch(source: _Port, target: _Port) -> str | None:
    """Why data cannot flow from ``source`` to ``target``, or None. Shapes are compared with the
    batch dimension included: Triton also accepts dims that only agree without it, which then fail
    at run time."""
    if source.spec.dtype != target.spec.dtype:
        return (f"{source.owner} is {_shape_text(source)} but {target.owner} takes {_shape_text(target)}: "
                "the data types differ")
    if not _dims_fit(_full_dims(source.spec.dims, source.batching), _full_dims(target.spec.dims, target.batching)):
        if source.batching != target.batching:
            why = "one of them batches (leading -1) and the other does not"
        else:
            why = "the shapes differ"
        return f"{source.owner} is {_shape_text(source)} but {target.owner} takes {_shape_text(target)}: {why}"
    return None


def _mismatch_hint(source: _Port, target: _Port) -> str:
    if source.spec.dtype != target.spec.dtype:
        return (f"make both {source.spec.dtype} or both {target.spec.dtype} (cast inside the producing model, "
                "or put a small conversion step between them)")
    if source.batching != target.batching:
        return ("register both models with a batch dimension (max_batch_size > 0), or give the one without it "
                "a leading -1 dim")
    return "register the models with matching dims (-1 for a size that varies)"


def _registry(registry: Any) -> Any:
    if registry is None:
        from .registry import default_registry

        return default_registry
    return registry


# ----------------------------------------------------------------------------- execution plan
@dataclasses.dataclass(frozen=True)
class PlannedStep:
    """One step, ready to run: where its inputs come from and which steps wait for it."""

    index: int
    model: str
    version: int | None  # None: the latest
    label: str
    inputs: tuple[tuple[str, str], ...]  # (model input, ensemble tensor)
    outputs: tuple[tuple[str, str], ...]  # (model output, ensemble tensor)
    waits_for: int  # how many distinct steps write its inputs
    dependents: tuple[int, ...]  # steps that read one of its outputs

    @property
    def output_names(self) -> list[str]:
        return [model_output for model_output, _ in self.outputs]


@dataclasses.dataclass(frozen=True)
class Plan:
    """An ensemble config compiled for execution: steps, the ones that start, a valid order."""

    name: str
    steps: tuple[PlannedStep, ...]
    first: tuple[int, ...]  # steps that read only ensemble inputs
    order: tuple[int, ...]  # a topological order
    outputs: tuple[str, ...]


def plan(config: ModelConfig) -> Plan:
    """Compile an ensemble config into a :class:`Plan`; rejects gaps and cycles.

    Raises:
        ConfigError: a step reads a tensor nothing writes, or the steps form a cycle.
    """
    raw = config.ensemble_scheduling.step
    counts: dict[str, int] = {}
    for step in raw:
        counts[step.model_name] = counts.get(step.model_name, 0) + 1
    labels = [f"step #{i} '{s.model_name}'" if counts[s.model_name] > 1 else f"step '{s.model_name}'" for i, s in enumerate(raw)]
    writer = {tensor: i for i, s in enumerate(raw) for tensor in s.output_map.values()}
    deps = [sorted({writer[t] for t in s.input_map.values() if t in writer}) for s in raw]
    dependents: list[list[int]] = [[] for _ in raw]
    for i, ds in enumerate(deps):
        for d in ds:
            dependents[d].append(i)
    order = _topological(config, raw, writer, labels)
    steps = tuple(
        PlannedStep(
            index=i,
            model=s.model_name,
            version=s.model_version if s.model_version > 0 else None,
            label=labels[i],
            inputs=tuple(sorted(s.input_map.items())),
            outputs=tuple(sorted(s.output_map.items())),
            waits_for=len(deps[i]),
            dependents=tuple(dependents[i]),
        )
        for i, s in enumerate(raw)
    )
    return Plan(config.name, steps, tuple(i for i in range(len(raw)) if not deps[i]), tuple(order),
                tuple(t.name for t in config.output))


def _topological(config: ModelConfig, raw: Any, writer: dict[str, int], labels: list[str]) -> list[int]:
    available = {t.name for t in config.input}
    pending = list(range(len(raw)))
    order: list[int] = []
    while pending:
        ready = [i for i in pending if all(t in available for t in raw[i].input_map.values())]
        if not ready:
            missing = sorted({t for i in pending for t in raw[i].input_map.values()} - available - set(writer))
            if missing:
                i = next(i for i in pending if set(raw[i].input_map.values()) & set(missing))
                raise ConfigError(f"{labels[i]} reads tensors that no ensemble input or step output writes",
                                  model=config.name, got=missing,
                                  hint="connect each step input to an ensemble input or to another step's output")
            path = ", ".join(labels[i] for i in pending)
            raise ConfigError(f"the steps form a cycle: {path} wait for each other", model=config.name,
                              hint="a step may only read ensemble inputs and outputs of steps that do not depend on it")
        for i in ready:
            pending.remove(i)
            order.append(i)
            available.update(raw[i].output_map.values())
    return order


def step_order(config: ModelConfig) -> list[Any]:
    """Steps (the config's messages) in an order where every step's inputs exist before it runs."""
    raw = config.ensemble_scheduling.step
    return [raw[i] for i in plan(config).order]


# ----------------------------------------------------------------------------- running without a server
def step_error(ensemble: str, version: Any, label: str, error: BaseException) -> NbserveError:
    """The ensemble's error for a failed step: the step's error class (500 for anything that is not an
    nbserve error), naming the ensemble and the step, carrying the model's own message."""
    if isinstance(error, ModelNotFound):
        cls: type[NbserveError] = ModelNotReady  # the ensemble exists; one of its models is missing
    elif isinstance(error, NbserveError) and _standard_error(type(error)):
        cls = type(error)
    else:
        cls = InferenceError
    wrapped = cls(f"{label} failed: {error}", model=ensemble, version=version)
    wrapped.step = label
    wrapped.__cause__ = error
    return wrapped


def _standard_error(cls: type) -> bool:
    from .errors import MissingDependency

    return not issubclass(cls, MissingDependency)


def step_arrays(ensemble: str, step: PlannedStep, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """A step's inputs by model input name, from the ensemble tensors.

    Raises:
        InvalidInput: an optional ensemble input the step reads was left out of the request.
    """
    try:
        return {model_input: tensors[tensor] for model_input, tensor in step.inputs}
    except KeyError as exc:
        tensor = exc.args[0]
        raise InvalidInput(f"the request left out this optional input, which {step.label} reads", model=ensemble,
                           tensor=tensor, hint=f"send '{tensor}' with the request") from None


def ensemble_runner(config: ModelConfig, registry: Any) -> Any:
    """A runner for direct calls without a server: the steps run one after another, in an order
    where each step's inputs exist, each through its model's checked ``infer``.

    The server does not use it: it runs the steps as a DAG through each model's batcher.
    """
    compiled = plan(config)

    def run(inputs: dict[str, Any]) -> dict[str, Any]:
        tensors = dict(inputs)
        for index in compiled.order:
            step = compiled.steps[index]
            try:
                step_inputs = step_arrays(config.name, step, tensors)
                result = registry.get(step.model).get_version(step.version).infer(step_inputs)
                for model_output, tensor in step.outputs:
                    tensors[tensor] = result[model_output]
            except Exception as exc:
                raise step_error(config.name, None, step.label, exc) from exc
        return {name: tensors[name] for name in compiled.outputs}

    return run


# ----------------------------------------------------------------------------- registering and writing
def version_entry(ens: Ensemble, registry: Any, *, name: str, version: int, options: Mapping[str, Any]) -> Any:
    """The ModelVersion that ``Registry.register(ens)`` stores: the validated config, a direct runner."""
    from .registry import ModelVersion

    if options:
        raise ConfigError(
            f"unknown option{'s' if len(options) > 1 else ''} {', '.join(sorted(options))} for an ensemble",
            model=name,
            hint="set max_batch_size on the Ensemble itself; inputs and outputs come from ens.input / ens.output",
        )
    notes = ens.check(registry)
    for note in notes:
        warnings.warn(f"ensemble '{name}': {note}", UserWarning, stacklevel=3)
    config = ens.to_config(registry, name=name)
    return ModelVersion(
        name=name,
        version=version,
        config=config,
        runner=ensemble_runner(config, registry),
        framework="ensemble",
        backend="ensemble",
        obj=ens,
    )


def write(obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
    """Ensembles have no files: Triton only needs the (empty) version folder and the config."""
    version_dir.mkdir(parents=True, exist_ok=True)
    return config
