"""What every framework backend provides, and the signature helpers they share.

A backend adapts a live object to a *runner* (a callable from a dict of batched arrays to a dict of
batched arrays) plus its signature, writes the object's files into a Triton version directory, and
reads them back into a runner. Backends import their framework lazily: ``matches`` looks at type and
module names only, so ``import nbserve`` and registering a plain function never import torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config import ModelConfig
from ..errors import SignatureError
from ..tensors import TensorSpec, array_library, as_bytes_array, numpy_dtype, triton_dtype

__all__ = [
    "Runner",
    "Adapted",
    "Backend",
    "module_names",
    "normalize_example",
    "specs_from_arrays",
    "synthesize_example",
    "check_declared",
]

Runner = Callable[[dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass(kw_only=True)
class Adapted:
    """A live object made servable: its runner, its signature and how Triton runs its files."""

    runner: Runner
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    framework: str  # shown to users: "python", "torch", "onnx", "xgboost", ...
    platform: str = ""
    backend: str = ""
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)
    device: str = "cpu"  # "cpu" or "gpu": export writes KIND_GPU for models that ran on a GPU
    # Tensors whose model shape differs from their dims (per-item scalars): reshape { shape: ... }.
    input_reshapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    output_reshapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    # Handed to the backend's write() later (never to the config): e.g. the example batch for tracing.
    writer_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    close: Callable[[], None] | None = None


class Backend(Protocol):
    """One module per framework implements this (see nbserve/backends/python.py)."""

    name: str

    def matches(self, obj: Any) -> bool:
        """Cheap test on type/module names; must not import the framework."""

    def adapt(
        self,
        obj: Any,
        *,
        name: str,
        inputs: list[TensorSpec] | None,
        outputs: list[TensorSpec] | None,
        example: Any,
        max_batch_size: int | None,
        options: dict[str, Any],
    ) -> Adapted:
        """Infer the signature and build a batched runner for ``obj``."""

    def write(self, obj: Any, config: ModelConfig, version_dir: Path, options: dict[str, Any]) -> ModelConfig:
        """Write the object's files into ``version_dir``; return the config to write beside them."""

    def reads(self, config: ModelConfig) -> bool:
        """True when this backend runs models with this config's platform/backend."""

    def read(self, config: ModelConfig, version_dir: Path) -> Adapted:
        """Load a runner from files written by ``write`` (or by hand, in Triton's layout)."""


def module_names(obj: Any) -> list[str]:
    """Module names of the object's type and its bases, without importing anything."""
    cls = obj if isinstance(obj, type) else type(obj)
    return [f"{c.__module__}.{c.__qualname__}" for c in getattr(cls, "__mro__", (cls,))]


# ----------------------------------------------------------------------------- signatures
def normalize_example(example: Any, names: Sequence[str]) -> dict[str, Any]:
    """An example given as a dict, one array, or a tuple of arrays -> dict by input name."""
    if isinstance(example, Mapping):
        return {str(k): _as_array(v) for k, v in example.items()}
    if isinstance(example, (tuple, list)) and example and not _is_scalar_list(example):
        if len(example) != len(names):
            raise SignatureError(
                "example has a different number of tensors than the model has inputs",
                expected=f"{len(names)} ({', '.join(names)})",
                got=len(example),
                hint="pass example as a dict {input_name: array}",
            )
        return {n: _as_array(v) for n, v in zip(names, example)}
    if len(names) != 1:
        raise SignatureError(
            "one example array was given for a model with several inputs",
            expected=f"{len(names)} ({', '.join(names)})",
            got=1,
            hint="pass example as a dict {input_name: array}",
        )
    return {names[0]: _as_array(example)}


def _is_scalar_list(value: Sequence[Any]) -> bool:
    return isinstance(value[0], (int, float, str, bytes))


def _as_array(value: Any) -> Any:
    if array_library(value) != "numpy" or isinstance(value, np.ndarray):
        if isinstance(value, np.ndarray) and value.dtype.kind in ("U", "S"):
            return as_bytes_array(value)
        return value
    if hasattr(value, "__array__") or isinstance(value, (list, tuple)):
        array = np.asarray(value)
        return as_bytes_array(array) if array.dtype.kind in ("U", "S", "O") else array
    if isinstance(value, (str, bytes)):
        return as_bytes_array([value])
    return np.asarray(value)


def specs_from_arrays(arrays: Mapping[str, Any], *, batched: bool, kind: str, model: str) -> list[TensorSpec]:
    """Specs from example arrays: dims are the shape, minus the batch dimension when batching."""
    specs = []
    for name, array in arrays.items():
        shape = tuple(int(s) for s in getattr(array, "shape", ()))
        if batched:
            if not shape:
                raise SignatureError(
                    f"example {kind} is a scalar but the model batches",
                    model=model,
                    tensor=name,
                    expected="a leading batch dimension",
                    hint="give the example a batch dimension, e.g. x[None], or pass max_batch_size=0",
                )
            shape = shape[1:]
        specs.append(TensorSpec(name, shape or (1,), triton_dtype(array)))
    return specs


def synthesize_example(specs: Sequence[TensorSpec], *, batched: bool) -> dict[str, Any]:
    """A one-item example from declared inputs (variable dims become 1), for output inference."""
    example = {}
    for spec in specs:
        shape = ([1] if batched else []) + [1 if d == -1 else d for d in spec.dims]
        if spec.dtype == "BYTES":
            example[spec.name] = np.full(shape, b"a", dtype=object)
        else:
            example[spec.name] = np.zeros(shape, dtype=numpy_dtype(spec.dtype))
    return example


def check_declared(
    declared: Sequence[TensorSpec] | None, inferred: Sequence[TensorSpec], *, kind: str, model: str
) -> list[TensorSpec]:
    """Declared specs win, but they must name the same tensors with the same dtypes as the example."""
    if not declared:
        return list(inferred)
    if not inferred:
        return list(declared)
    declared_names = [s.name for s in declared]
    inferred_names = [s.name for s in inferred]
    if sorted(declared_names) != sorted(inferred_names):
        raise SignatureError(
            f"declared {kind}s do not match the model",
            model=model,
            expected=inferred_names,
            got=declared_names,
            hint=f"name the {kind}s as the model does, or drop {kind}s= to infer them",
        )
    by_name = {s.name: s for s in inferred}
    for spec in declared:
        found = by_name[spec.name]
        if spec.dtype != found.dtype:
            raise SignatureError(
                f"declared {kind} dtype does not match what the model takes/returns",
                model=model,
                tensor=spec.name,
                expected=found.dtype,
                got=spec.dtype,
                hint=f'declare TensorSpec("{spec.name}", {list(spec.dims)}, "{found.dtype}") or cast in the model',
            )
        if len(spec.dims) != len(found.dims) or any(
            d != -1 and f != -1 and d != f for d, f in zip(spec.dims, found.dims)
        ):
            raise SignatureError(
                f"declared {kind} dims do not match the example",
                model=model,
                tensor=spec.name,
                expected=list(found.dims),
                got=list(spec.dims),
                hint="dims exclude the batch dimension; use -1 for variable sizes",
            )
    return list(declared)
