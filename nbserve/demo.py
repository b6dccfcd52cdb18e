"""What ``nbserve demo`` runs: the quickstart notebook, headless, on tiny models of every installed
framework, printing what a notebook user would see.

Each step is a small function, run in order by :func:`run`::

    register_models -> show_models -> serve -> infer (tritonclient) -> benchmark -> export + validate -> compare

A framework whose package is not installed is skipped with the pip extra that adds it; a framework
that is installed must work, so any other failure stops the demo with a non-zero exit status.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .registry import Registry
from .repository import read_repository

__all__ = ["FRAMEWORKS", "DemoModel", "run"]

_SEED = 0


@dataclasses.dataclass(frozen=True)
class DemoModel:
    """A registered demo model and the sample request that checks it."""

    name: str
    framework: str
    sample: dict[str, Any]


# ----------------------------------------------------------------------------- the models
def text_features(text: np.ndarray) -> dict[str, np.ndarray]:
    """Python/NumPy with a BYTES input: per-row length, word count and share of vowels, and the text
    normalized (a BYTES output)."""
    rows = [t.decode("utf-8") for t in text.reshape(-1)]
    features = np.array(
        [[len(r), len(r.split()), sum(c in "aeiou" for c in r.lower()) / max(len(r), 1)] for r in rows],
        dtype=np.float32,
    )
    normalized = np.array([[" ".join(r.lower().split()).encode()] for r in rows], dtype=object)
    return {"features": features, "normalized": normalized}


def _python_model(registry: Registry) -> DemoModel:
    example = np.array([[b"Serve models from a notebook"], [b"Triton  config"]], dtype=object)
    registry.register(text_features, example=example, max_batch_size=32,
                      dynamic_batching={"max_queue_delay_microseconds": 100})
    sample = {"text": np.array([[b"Hello World"], ["Grüße  aus Köln".encode()]], dtype=object)}
    return DemoModel("text_features", "python", sample)


def _torch_model(registry: Registry) -> DemoModel:
    import torch

    torch.manual_seed(_SEED)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    example = torch.randn(4, 8)
    registry.register(mlp, name="mlp", example=example, max_batch_size=64,
                      dynamic_batching={"max_queue_delay_microseconds": 100, "preferred_batch_size": [16, 32]},
                      instances=2)
    inputs = registry.get("mlp").inputs
    return DemoModel("mlp", "torch", {inputs[0].name: _rng().normal(size=(3, 8)).astype(np.float32)})


def _onnx_model(registry: Registry) -> DemoModel:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = _rng()
    weight = rng.normal(size=(4, 3)).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "weight"], ["xw"]),
            helper.make_node("Add", ["xw", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "linear_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    # IR 8 / opset 17: old enough for every onnxruntime this package supports.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    registry.register(model, name="linear_softmax", max_batch_size=16)
    return DemoModel("linear_softmax", "onnx", {"x": rng.normal(size=(5, 4)).astype(np.float32)})


def _forest_model(registry: Registry) -> DemoModel:
    rng = _rng()
    features = rng.normal(size=(200, 5)).astype(np.float32)
    target = features[:, 0] * 2 - features[:, 1] + 0.1 * rng.normal(size=200)
    if importlib.util.find_spec("xgboost") is not None:
        import xgboost

        forest = xgboost.train({"max_depth": 3, "eta": 0.3, "nthread": 1, "seed": _SEED},
                               xgboost.DMatrix(features, label=target), num_boost_round=10)
        framework = "xgboost"
    else:
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(n_estimators=10, max_depth=4, random_state=_SEED, n_jobs=1)
        forest.fit(features, target)
        framework = "scikit-learn"
    registry.register(forest, name="forest")
    inputs = registry.get("forest").inputs
    return DemoModel("forest", framework, {inputs[0].name: rng.normal(size=(4, 5)).astype(np.float32)})


def _rng() -> np.random.Generator:
    return np.random.default_rng(_SEED)


@dataclasses.dataclass(frozen=True)
class Framework:
    """One demo model: the packages it needs (any one of ``any_of`` will do) and the extra that adds them."""

    name: str
    needs: tuple[str, ...]
    extra: str
    build: Callable[[Registry], DemoModel]
    any_of: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        absent = [m for m in self.needs if importlib.util.find_spec(m) is None]
        if self.any_of and all(importlib.util.find_spec(m) is None for m in self.any_of):
            absent.append(" or ".join(self.any_of))
        return absent


FRAMEWORKS = (
    Framework("python", (), "", _python_model),
    Framework("torch", ("torch",), "torch", _torch_model),
    Framework("onnx", ("onnx", "onnxruntime"), "onnx", _onnx_model),
    Framework("trees", ("treelite",), "trees", _forest_model, any_of=("xgboost", "sklearn")),
)


# ----------------------------------------------------------------------------- the steps
def register_models(registry: Registry, frameworks: Iterable[Framework], say: Callable[[str], None]) -> list[DemoModel]:
    """Register one tiny model per installed framework; say which were skipped and how to add them."""
    models = []
    for framework in frameworks:
        missing = framework.missing()
        if missing:
            say(f"  skipped {framework.name}: {', '.join(missing)} not installed "
                f'(pip install "nbserve[{framework.extra}]")')
            continue
        model = framework.build(registry)
        say(f"  registered {model.name!r} ({model.framework})")
        models.append(model)
    return models


def show_models(registry: Registry, models: Sequence[DemoModel], say: Callable[[str], None]) -> None:
    """The models table, then the first model's config.pbtxt: what Triton will read (every model has one)."""
    say(repr(registry.models()))
    if models:
        first = registry.get(models[0].name)
        say(f"\n--- {first.name}/config.pbtxt (what Triton reads; nbserve.get(name).pbtxt shows any model's)")
        say(first.pbtxt.rstrip())


def serve(registry: Registry, say: Callable[[str], None]) -> Any:
    """Start the embedded server in this process, as ``nbserve.serve()`` does in a notebook kernel."""
    from .serving.server import Server

    server = Server(registry).start()
    say(f"  KServe v2 over HTTP at {server.http_url} and gRPC at {server.grpc_url}, Prometheus at "
        f"{server.metrics_url} (ready in {server.ready_s:.2f} s)")
    return server


def infer(server: Any, registry: Registry, models: Sequence[DemoModel], say: Callable[[str], None]) -> bool:
    """Send each sample with tritonclient over HTTP, as any Triton client would; True when every answer
    equals the live object's."""
    import tritonclient.http as httpclient

    from .tensors import to_numpy

    client = httpclient.InferenceServerClient(server.http_address)
    all_match = True
    try:
        for model in models:
            inputs = []
            for name, value in model.sample.items():
                array = np.asarray(value)
                tensor = httpclient.InferInput(name, list(array.shape), _triton_dtype(array))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            result = client.infer(model.name, inputs)
            expected = registry.get(model.name).infer(model.sample)
            got = {name: result.as_numpy(name) for name in expected}
            same = all(_same(to_numpy(expected[n]), got[n]) for n in expected)
            all_match &= same
            if model is models[0]:  # show one request in full
                say(f"  client.infer({model.name!r}, {_show(model.sample)})")
                for name, value in got.items():
                    say(f"    {name} = {_show_array(value)}")
            else:
                shapes = ", ".join(f"{n} {list(v.shape)}" for n, v in got.items())
                say(f"  client.infer({model.name!r}, ...) -> {shapes}")
            say(f"    {'the same as' if same else 'DIFFERENT from'} calling the live object in this process")
    finally:
        client.close()
    return all_match


def benchmark(server: Any, model: str, say: Callable[[str], None]) -> Any:
    """A short closed-loop benchmark over HTTP (perf_analyzer's table), about a second per level."""
    from .bench.run import bench

    run = bench(server, model, concurrency=[1, 4], protocol="http", measurement_interval_ms=300, warmup_s=0.1,
                stability_windows=2, max_windows=3, live=False)
    say(run.table())
    return run


def export_and_validate(registry: Registry, path: Path, say: Callable[[str], None]) -> Path:
    """The production repository (README, kserve.yaml) via ``nbserve.export``, then ``nbserve.validate``."""
    from .export.exporter import export
    from .export.validate import validate

    report = export(path, registry=registry, progress=False)
    say(repr(report))
    say(f"\n  nbserve.validate({str(report.path)!r}): {validate(report.path).summary()}")
    return report.path


def read_back(repo: Path, say: Callable[[str], None]) -> Registry:
    """A new registry read from the files alone, as subprocess serving and Triton would load them."""
    registry = read_repository(repo)
    say(f"  read {len(registry)} model(s): {', '.join(registry.names())}")
    return registry


def compare(live: Registry, loaded: Registry, models: Sequence[DemoModel], say: Callable[[str], None]) -> bool:
    """Run each sample through the live object and the read-back model; True when all outputs match."""
    all_match = True
    for model in models:
        expected = live.get(model.name).infer(model.sample)
        got = loaded.get(model.name).infer(model.sample)
        mismatched = [name for name in expected if not _same(expected[name], got.get(name))]
        rows = len(next(iter(model.sample.values())))
        if mismatched:
            all_match = False
            say(f"  {model.name}: MISMATCH in {', '.join(mismatched)}")
        else:
            say(f"  {model.name}: {rows} rows, outputs {', '.join(sorted(expected))} match")
    return all_match


def _triton_dtype(array: np.ndarray) -> str:
    from .tensors import triton_dtype

    return triton_dtype(array.dtype)


def _show(sample: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{name!r}: {_show_array(np.asarray(v))}" for name, v in sample.items()) + "}"


def _show_array(array: np.ndarray) -> str:
    if array.dtype == object:
        return repr([[v.decode() if isinstance(v, bytes) else v for v in row] for row in array.reshape(len(array), -1).tolist()])
    return np.array2string(array, precision=3, separator=", ", suppress_small=True).replace("\n", "")


def _same(a: Any, b: Any) -> bool:
    if b is None:
        return False
    from .tensors import to_numpy

    a, b = to_numpy(a), to_numpy(b)
    if a.shape != b.shape:
        return False
    if a.dtype == object or b.dtype == object:
        return a.tolist() == b.tolist()
    return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-5, atol=1e-6))


# ----------------------------------------------------------------------------- the sequence
def run(out: str | Path | None = None, *, frameworks: Iterable[str] | None = None,
        say: Callable[[str], None] = print) -> int:
    """Run every step; return the exit status (0 when the server and the exported repository answer
    like the live objects).

    Args:
        out: where to export the repository; a temporary directory (removed afterwards) when None.
        frameworks: names from :data:`FRAMEWORKS` to include (all by default).
        say: where progress lines go.
    """
    chosen = _choose(frameworks)
    registry = Registry()
    timer = _StepTimer(say)
    say("nbserve demo: the quickstart notebook (notebooks/01-quickstart.ipynb), headless")
    with timer("register a tiny model per framework (nbserve.register)"):
        models = register_models(registry, chosen, say)
    with timer("the models and their Triton config (nbserve.models())"):
        show_models(registry, models, say)
    with tempfile.TemporaryDirectory(prefix="nbserve-demo-") as scratch:
        with timer("serve them in this process (nbserve.serve())"):
            server = serve(registry, say)
        try:
            with timer("a sample inference with tritonclient over HTTP"):
                served_ok = infer(server, registry, models, say)
            bench_model = next((m.name for m in models if m.framework == "torch"), models[0].name)
            with timer(f"benchmark {bench_model!r} over HTTP (nbserve.bench)"):
                benchmark(server, bench_model, say)
        finally:
            server.stop()
        path = Path(out) if out is not None else Path(scratch) / "model_repository"
        with timer(f"export the production repository to {path} (nbserve.export, nbserve.validate)"):
            repo = export_and_validate(registry, path, say)
        with timer("read the export back and run each sample through it"):
            loaded = read_back(repo, say)
            exported_ok = compare(registry, loaded, models, say)
        loaded.clear()
    registry.clear()
    ok = served_ok and exported_ok
    if out is not None:
        say(f"\nThe repository stays in {path}: `nbserve serve {path}` serves it, and so does tritonserver.")
    say(f"\n{'all outputs match' if ok else 'some outputs differ'} ({timer.total_s:.1f} s)")
    return 0 if ok else 1


def _choose(names: Iterable[str] | None) -> list[Framework]:
    if names is None:
        return list(FRAMEWORKS)
    known = {f.name: f for f in FRAMEWORKS}
    wanted = list(names)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        from .errors import ConfigError

        raise ConfigError(f"unknown demo framework {', '.join(unknown)}", expected=", ".join(known),
                          hint="pass --frameworks " + ",".join(known))
    return [known[n] for n in wanted]


class _StepTimer:
    """Numbers and times the steps: ``with timer("title"): ...``."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.count = 0
        self.total_s = 0.0

    def __call__(self, title: str) -> _StepTimer:
        self.count += 1
        self.say(f"\n[{self.count}] {title}")
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        elapsed = time.perf_counter() - self._start
        self.total_s += elapsed
        if exc[0] is None:
            self.say(f"    ({elapsed:.2f} s)")
