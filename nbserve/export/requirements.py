"""``requirements.txt`` for Python-backend models: what the code imports, at the kernel's versions.

Triton's container has Python and NumPy, not the packages a notebook callable uses. For each
Python-backend model folder nbserve finds the modules the model needs:

* a registered callable (``callable.pkl``): the classes and functions the pickle refers to, the
  modules cloudpickle re-imports for the callable's globals, and the ``import`` statements inside
  the callable and the functions it carries by value (those run only when it is called);
* a portable wrapper (``nbserve_portable.json``): its framework (onnxruntime, torch, treelite);
* any other ``model.py`` (the transformers tokenizer, hand-written models): its ``import`` statements.

Top-level module names are mapped to installed distributions with
``importlib.metadata.packages_distributions()`` and pinned to the versions installed in the kernel.
"""

from __future__ import annotations

import ast
import dis
import importlib.metadata
import io
import json
import pickle
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Requirement", "modules_of_callable", "modules_of_model_dir", "requirements_for", "render_requirements",
           "EXECUTION_ENV_NOTE"]

CALLABLE_FILE = "callable.pkl"
# Modules that are never requirements: the interpreter's own and Triton's.
_PROVIDED = {"__main__", "builtins", "triton_python_backend_utils", "__future__"}

EXECUTION_ENV_NOTE = """\
Triton's Python backend runs model.py with the container's Python and packages. To give this
model the packages listed below, pack an environment and point the model at it (Triton's
EXECUTION_ENV_PATH):

    conda create -y -p ./{model}-env python={python} && conda activate ./{model}-env
    pip install -r {model}/requirements.txt conda-pack
    conda-pack -p ./{model}-env -o {model}/python_env.tar.gz

and add to {model}/config.pbtxt:

    parameters: {{ key: "EXECUTION_ENV_PATH", value: {{ string_value: "$$TRITON_MODEL_DIRECTORY/python_env.tar.gz" }} }}

The environment's Python must be the one the container's Python-backend stub was built for; for
another version, build the stub as Triton's python_backend README explains ("Building Custom
Python Backend Stub"). Pickled callables need the Python they were pickled with ({python}).
"""


class Requirement(tuple):
    """(distribution, version, note) for one line of requirements.txt."""

    __slots__ = ()

    def __new__(cls, distribution: str, version: str, note: str = "") -> Requirement:
        return super().__new__(cls, (distribution, version, note))

    @property
    def distribution(self) -> str:
        return self[0]

    @property
    def version(self) -> str:
        return self[1]

    @property
    def note(self) -> str:
        return self[2]

    def line(self) -> str:
        # A local version label (torch 2.3.0+cpu) is not on PyPI: pin the public part, keep the rest as a note.
        public, _, local = self.version.partition("+")
        text = f"{self.distribution}=={public}"
        notes = [n for n in (f"installed: {self.version}" if local else "", self.note) if n]
        return f"{text}  # {'; '.join(notes)}" if notes else text


# ----------------------------------------------------------------------------- finding modules
def _imports_in_code(code: types.CodeType) -> set[str]:
    """Modules named by ``import`` statements in a code object and the code objects inside it."""
    found: set[str] = set()
    todo = [code]
    while todo:
        current = todo.pop()
        for instruction in dis.get_instructions(current):
            if instruction.opname == "IMPORT_NAME" and isinstance(instruction.argval, str):
                found.add(instruction.argval)
        todo.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return found


def _walk_objects(root: Any, limit: int = 10_000) -> tuple[set[str], set[str]]:
    """(modules imported inside reachable functions, modules of reachable objects' types)."""
    imported: set[str] = set()
    typed: set[str] = set()
    seen: set[int] = set()
    todo = [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            typed.add(obj.__name__)
            continue
        module = getattr(type(obj), "__module__", None)
        if isinstance(module, str):
            typed.add(module)
        if isinstance(obj, types.FunctionType):
            typed.add(obj.__module__ or "")
            if not _by_value(obj.__module__):
                continue  # an installed library's function: its package is the requirement, not its internals
            imported |= _imports_in_code(obj.__code__)
            names = set(obj.__code__.co_names)
            for code in _nested_code(obj.__code__):
                names |= set(code.co_names)
            todo.extend(v for k, v in obj.__globals__.items() if k in names)
            todo.extend(cell.cell_contents for cell in (obj.__closure__ or ()) if _filled(cell))
            todo.extend(obj.__defaults__ or ())
            todo.extend((obj.__kwdefaults__ or {}).values())
        elif isinstance(obj, types.MethodType):
            todo.extend((obj.__func__, obj.__self__))
        elif isinstance(obj, type):
            typed.add(obj.__module__)
            if not _by_value(obj.__module__):
                continue
            todo.extend(v for v in vars(obj).values() if isinstance(v, (types.FunctionType, staticmethod, classmethod)))
        elif isinstance(obj, (staticmethod, classmethod)):
            todo.append(obj.__func__)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        else:
            func = getattr(obj, "func", None)  # functools.partial
            if callable(func):
                todo.extend((func, getattr(obj, "args", ()), getattr(obj, "keywords", {})))
            if hasattr(obj, "__dict__") and not isinstance(obj, types.ModuleType):
                todo.append(type(obj))
                todo.extend(v for v in vars(obj).values() if callable(v) or isinstance(v, types.ModuleType))
    return imported, typed


def _by_value(module: str | None) -> bool:
    """Whether cloudpickle carries this module's functions by value (notebook and local files)."""
    if not module or module == "__main__":
        return True
    top = module.split(".")[0]
    return top not in sys.stdlib_module_names and top not in _distributions()


def _distributions() -> dict[str, list[str]]:
    global _DISTRIBUTIONS
    if _DISTRIBUTIONS is None:
        _DISTRIBUTIONS = importlib.metadata.packages_distributions()
    return _DISTRIBUTIONS


_DISTRIBUTIONS: dict[str, list[str]] | None = None


def reset_distributions() -> None:
    """Forget the cached module -> distribution map (packages may have been installed since)."""
    global _DISTRIBUTIONS
    _DISTRIBUTIONS = None


def _distributions_of(top: str) -> list[str]:
    """Distributions that install the import name ``top``.

    Most packages are distributed under their import name (numpy, torch, cloudpickle), which one
    metadata lookup confirms; only the others (sklearn -> scikit-learn) need the scan of every
    installed distribution that ``packages_distributions`` does (about a second on a big environment).
    """
    try:
        found = importlib.metadata.distribution(top)
    except importlib.metadata.PackageNotFoundError:
        return list(_distributions().get(top, ()))
    provided = (found.read_text("top_level.txt") or "").split()
    if not provided or top in provided:
        return [found.metadata["Name"]]
    return list(_distributions().get(top, ()))


def _nested_code(code: types.CodeType) -> Iterable[types.CodeType]:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from _nested_code(const)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell (a closure variable not assigned yet)
        return False
    return True


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles a cloudpickle payload, recording every module it refers to or re-imports."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.modules: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.modules.add(module)
        found = super().find_class(module, name)
        if name in ("subimport", "dynamic_subimport") and module.startswith("cloudpickle"):
            # Globals that are modules travel as subimport("numpy"): record the argument too.
            def recording(module_name: str, *args: Any) -> Any:
                self.modules.add(module_name)
                return found(module_name, *args)

            return recording
        return found


def modules_of_callable(payload: bytes | None = None, live: Any = None) -> set[str]:
    """Module names a pickled callable needs: from its payload, and from the callable itself.

    Args:
        payload: the ``callable.pkl`` bytes (what Triton will unpickle).
        live: the live callable, when the export has it (finds imports inside function bodies even
            when the payload cannot be loaded here).

    Returns:
        Dotted module names (filter them with :func:`requirements_for`).
    """
    modules: set[str] = set()
    loaded = None
    if payload is not None:
        unpickler = _RecordingUnpickler(payload)
        try:
            loaded = unpickler.load()
        except Exception:  # a payload this process cannot load: what was recorded so far still counts
            loaded = None
        modules |= unpickler.modules
    for obj in (live, loaded):
        if obj is not None:
            imported, typed = _walk_objects(obj)
            modules |= imported | typed
    return modules


def _imports_in_source(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def modules_of_model_dir(model_dir: Path, live: Any = None) -> set[str]:
    """Module names the Python-backend model in ``model_dir`` needs (all its version folders)."""
    from .portable import FRAMEWORKS, SIDECAR_FILE

    modules: set[str] = {"numpy"}  # Triton's Python backend hands model.py NumPy arrays
    for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        sidecar = version_dir / SIDECAR_FILE
        pickled = version_dir / CALLABLE_FILE
        if pickled.is_file():
            modules.add("cloudpickle")  # nbserve's model.py loads the callable with it
            modules |= modules_of_callable(pickled.read_bytes(), live)
        elif sidecar.is_file():
            framework = json.loads(sidecar.read_text()).get("framework", "")
            if framework in FRAMEWORKS:
                modules.add(FRAMEWORKS[framework][1])
        elif (version_dir / "model.py").is_file():
            local = {p.stem for p in version_dir.glob("*.py")}
            modules |= {m for m in _imports_in_source((version_dir / "model.py").read_text())
                        if m.split(".")[0] not in local}
    return modules


# ----------------------------------------------------------------------------- modules -> distributions
def requirements_for(modules: Iterable[str]) -> list[Requirement]:
    """Pinned distributions for module names; the standard library and Triton's own are left out."""
    chosen: dict[str, Requirement] = {}
    for top in sorted({m.split(".")[0] for m in modules if m}):
        if top in _PROVIDED or top in sys.stdlib_module_names or top.startswith("_"):
            continue
        for distribution in _distributions_of(top):
            key = distribution.lower().replace("_", "-")
            if key in chosen:
                continue
            try:
                version = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                continue
            chosen[key] = Requirement(distribution, version, "" if top == key else f"import {top}")
    return sorted(chosen.values(), key=lambda r: r.distribution.lower())


def render_requirements(model: str, requirements: Iterable[Requirement], *, python: str | None = None) -> str:
    """The text of ``<model>/requirements.txt``, with the EXECUTION_ENV_PATH note as comments."""
    python = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    note = EXECUTION_ENV_NOTE.format(model=model, python=python)
    header = [
        f"# Python packages the Triton Python-backend model '{model}' imports, pinned to the versions",
        f"# installed in the notebook kernel (Python {sys.version.split()[0]}). Written by nbserve.export.",
        "#",
        *[f"# {line}".rstrip() for line in note.splitlines()],
    ]
    return "\n".join([*header, *(r.line() for r in requirements)]) + "\n"
