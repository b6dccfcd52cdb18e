"""``nbserve.parity``: does the exported repository answer like the notebook?

The same requests go to three places and the answers are compared output by output:

* the reference: the live models in the kernel's registry (or, for models not registered there, the
  repository read into this process, which is what ``nbserve parity REPO`` on the command line uses);
* the repository served by an nbserve subprocess (``nbserve serve REPO``);
* the repository served by a real ``tritonserver`` where one can run here (nbserve's
  ``_tritonserver``: nvidia-pytriton's build, Python backend only; native models are reported as not
  loadable there rather than failing the run).

The report gives, per model and output, the largest absolute and relative difference against the
reference and whether they are within ``rtol``/``atol`` (``numpy.allclose``), plus the median
latency of one request on each side.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError, MissingDependency, NbserveError
from ..registry import Registry, default_registry
from ..tensors import numpy_dtype, to_numpy, triton_dtype

__all__ = ["parity", "ParityReport", "ParityRow", "synthesize_samples"]

TARGETS = ("subprocess", "triton")


@dataclasses.dataclass
class ParityRow:
    """One output of one model on one target, against the reference."""

    model: str
    output: str
    target: str  # "subprocess" or "triton"
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""


@dataclasses.dataclass
class ParityReport:
    """Differences per model/output/target and latencies per model/side; ``ok`` when all agree."""

    repository: Path
    reference: dict[str, str]  # model -> "kernel" or "repository"
    rows: list[ParityRow]
    latency_ms: dict[str, dict[str, float]]  # model -> {"kernel"/"repository", "subprocess", "triton": median ms}
    skipped: dict[str, str]  # "triton" or "<model> on triton" -> why it was not compared
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def row(self, model: str, output: str, target: str) -> ParityRow:
        for r in self.rows:
            if (r.model, r.output, r.target) == (model, output, target):
                return r
        raise KeyError((model, output, target))

    def targets(self) -> list[str]:
        return [t for t in TARGETS if any(r.target == t for r in self.rows)]

    def _table(self) -> tuple[list[str], list[list[str]]]:
        targets = self.targets()
        header = ["model", "output"]
        for t in targets:
            header += [f"{t} max abs", f"{t} max rel"]
        header += ["reference ms", *(f"{t} ms" for t in targets)]
        rows = []
        for model in dict.fromkeys(r.model for r in self.rows):
            for output in dict.fromkeys(r.output for r in self.rows if r.model == model):
                line = [model, output]
                for t in targets:
                    found = [r for r in self.rows if (r.model, r.output, r.target) == (model, output, t)]
                    if found:
                        r = found[0]
                        mark = "" if r.ok else " !"
                        line += [_number(r.max_abs) + mark, _number(r.max_rel)]
                    else:
                        line += ["-", "-"]
                latency = self.latency_ms.get(model, {})
                line.append(_number(latency.get(self.reference.get(model, "kernel"), math.nan), ms=True))
                line += [_number(latency.get(t, math.nan), ms=True) for t in targets]
                rows.append(line)
        return header, rows

    def __repr__(self) -> str:
        header, rows = self._table()
        table = [header, *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        verdict = "agree" if self.ok else "DIFFER"
        lines.insert(0, f"Parity of {self.repository} ({verdict}; rtol={self.rtol:g}, atol={self.atol:g}):")
        lines += [f"{r.model}/{r.output} on {r.target}: {r.note}" for r in self.rows if r.note]
        lines += [f"not compared: {what}: {why}" for what, why in self.skipped.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        header, rows = self._table()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        notes = "".join(f"<li>{html.escape(f'{r.model}/{r.output} on {r.target}: {r.note}')}</li>"
                        for r in self.rows if r.note)
        notes += "".join(f"<li>not compared: {html.escape(w)}: {html.escape(y)}</li>" for w, y in self.skipped.items())
        verdict = "agree" if self.ok else "differ"
        return (f"<div class='nbserve-parity'><b>Parity of <code>{html.escape(str(self.repository))}</code>: "
                f"{verdict}</b><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                + (f"<ul>{notes}</ul>" if notes else "") + "</div>")


def _number(value: float, ms: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if ms else f"{value:.3g}"


# ----------------------------------------------------------------------------- samples
def synthesize_samples(config: ModelConfig, seed: int = 0, rows: int = 2) -> dict[str, np.ndarray]:
    """A request for the model made from its config: random values of each input's dtype and dims.

    >>> from nbserve.config import build_config
    >>> cfg = build_config(name="m", inputs=[("x", [-1, 3], "FP32")], outputs=[("y", [1], "FP32")], max_batch_size=8)
    >>> synthesize_samples(cfg)["x"].shape
    (2, 3, 3)
    """
    rng = np.random.default_rng(seed)
    lead = [min(rows, config.max_batch_size)] if config.max_batch_size > 0 else []
    sample = {}
    for tensor in config.input:
        if tensor.optional:
            continue
        shape = lead + [3 if d < 0 else int(d) for d in tensor.dims]
        datatype = triton_dtype(tensor.data_type)
        if datatype == "BYTES":
            values = [f"sample text {i}".encode() for i in range(int(np.prod(shape)))]
            array = np.array(values, dtype=object).reshape(shape)
        elif datatype == "BOOL":
            array = rng.random(shape) > 0.5
        elif datatype.startswith(("INT", "UINT")):
            array = rng.integers(0, 10, size=shape).astype(numpy_dtype(datatype))
        else:
            array = rng.standard_normal(shape).astype(numpy_dtype(datatype) if datatype != "BF16" else np.float32)
        sample[tensor.name] = array
    return sample


def load_samples(path: str | os.PathLike[str], repo: str | os.PathLike[str]) -> dict[str, dict[str, np.ndarray]]:
    """Requests from a file: ``.npz`` with keys ``MODEL/INPUT``, or ``.json`` ``{model: {input: values}}``
    (JSON values take each input's data type from the repository's config)."""
    import json

    from ..config import parse

    path = Path(path)
    samples: dict[str, dict[str, np.ndarray]] = {}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=True) as data:  # BYTES inputs are object arrays
            for key in data.files:
                model, _, tensor = key.partition("/")
                if not tensor:
                    raise ConfigError("npz sample keys are MODEL/INPUT", got=key, hint="np.savez(f, **{'m/x': x})")
                samples.setdefault(model, {})[tensor] = data[key]
        return samples
    raw = json.loads(path.read_text())
    for model, inputs in raw.items():
        config_file = Path(repo) / model / "config.pbtxt"
        if not config_file.is_file():
            raise ConfigError("a sample names a model that is not in the repository", model=model,
                              got=str(config_file), hint="use the model folder names as keys")
        types = {t.name: triton_dtype(t.data_type) for t in parse(config_file.read_text()).input}
        for tensor, values in inputs.items():
            datatype = types.get(tensor)
            if datatype is None:
                raise ConfigError("a sample names an input the model does not have", model=model, tensor=tensor,
                                  expected=f"one of {sorted(types)}")
            if datatype == "BYTES":
                array = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(
                    np.array(values, dtype=object))
            else:
                array = np.asarray(values, dtype=numpy_dtype(datatype))
            samples.setdefault(model, {})[tensor] = array
    return samples


def _as_requests(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, Mapping):
        return [dict(value)]
    return [dict(v) for v in value]


# ----------------------------------------------------------------------------- comparing
def compare(got: Any, expected: Any, rtol: float, atol: float) -> tuple[float, float, bool, str]:
    """(max abs, max rel, allclose, note) for one output against the reference."""
    got, expected = to_numpy(got), to_numpy(expected)
    if got.shape != expected.shape:
        return math.nan, math.nan, False, f"shape {list(got.shape)} instead of {list(expected.shape)}"
    if expected.dtype == object or got.dtype == object:
        same = all(_as_bytes(a) == _as_bytes(b) for a, b in zip(got.reshape(-1), expected.reshape(-1)))
        return (0.0 if same else math.nan), (0.0 if same else math.nan), same, "" if same else "BYTES values differ"
    a, b = got.astype(np.float64), expected.astype(np.float64)
    if a.size == 0:
        return 0.0, 0.0, True, ""
    diff = np.abs(a - b)
    scale = np.abs(b)
    rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), np.where(diff > 0, np.inf, 0.0))
    ok = bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
    note = "" if got.dtype == expected.dtype else f"dtype {got.dtype} instead of {expected.dtype}"
    return float(np.nanmax(diff)), float(np.nanmax(rel)), ok and not note, note


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _timed(call: Any, requests: Sequence[dict[str, Any]], repeats: int) -> tuple[list[dict[str, Any]], float]:
    """Outputs of the first pass, and the median latency in ms over ``repeats`` passes."""
    outputs, times = [], []
    for attempt in range(max(repeats, 1)):
        for request in requests:
            started = time.perf_counter()
            result = call(request)
            times.append((time.perf_counter() - started) * 1e3)
            if attempt == 0:
                outputs.append({k: to_numpy(v) for k, v in result.items()})
    return outputs, statistics.median(times)


# ----------------------------------------------------------------------------- parity
def parity(
    repo: str | os.PathLike[str],
    samples: Mapping[str, Any] | None = None,
    *,
    registry: Registry | None = None,
    triton: bool | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    repeats: int = 3,
    timeout_s: float = 120.0,
) -> ParityReport:
    """Send the same requests to the kernel's models, the repository in an nbserve subprocess and,
    where available, in a real tritonserver; report the differences and latencies side by side.

    Args:
        repo: an exported Triton repository.
        samples: ``{model: inputs}`` or ``{model: [inputs, ...]}``; default: a random request per
            model of the repository, made from its config (ensemble steps excluded).
        registry: where the reference models are (default: ``nbserve.register``'s); a model not
            registered there is compared against the repository read into this process.
        triton: True requires the real tritonserver, False skips it, None uses it where it can run.
        rtol, atol: the tolerance of the comparison (``numpy.allclose``).
        repeats: passes over the samples for the latency medians.
        timeout_s: how long a server may take to start.

    Returns:
        A :class:`ParityReport`; ``report.ok`` when every output agrees within the tolerance.

    Raises:
        MissingDependency: ``triton=True`` and tritonserver cannot run here.
        ConfigError: the repository cannot be read, or a sample names an unknown model.
    """
    from ..repository import read_repository
    from ..serving.child import SubprocessServer

    root = Path(repo)
    registry = registry if registry is not None else default_registry
    local = read_repository(root)
    if samples is None:
        steps = {s.model_name for n in local.names() for s in local.get(n).config.ensemble_scheduling.step}
        samples = {n: synthesize_samples(local.get(n).config) for n in local.names() if n not in steps}
    requests = {name: _as_requests(value) for name, value in samples.items()}
    for name in requests:
        if name not in local:
            raise ConfigError("a sample names a model that is not in the repository", model=name,
                              expected=f"one of {local.names()}", hint="export the model, or fix the sample's key")
    reference_kind = {name: "kernel" if name in registry else "repository" for name in requests}
    rows: list[ParityRow] = []
    latency: dict[str, dict[str, float]] = {name: {} for name in requests}
    skipped: dict[str, str] = {}
    expected: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, batch in requests.items():
            source = registry if reference_kind[name] == "kernel" else local
            model = source.get(name)
            expected[name], latency[name][reference_kind[name]] = _timed(model.infer, batch, repeats)
    finally:
        local.clear()

    with SubprocessServer(repository=root) as server:
        server.start(timeout_s=timeout_s)
        for name, batch in requests.items():
            got, latency[name]["subprocess"] = _timed(lambda r, n=name: server.infer(n, r), batch, repeats)
            rows += _rows(name, "subprocess", got, expected[name], rtol, atol)

    rows += _triton_rows(root, requests, expected, latency, skipped, triton, rtol, atol, repeats, timeout_s)
    return ParityReport(root, reference_kind, rows, latency, skipped, rtol, atol)


def _rows(model: str, target: str, got: list[dict[str, Any]], expected: list[dict[str, Any]], rtol: float,
          atol: float) -> list[ParityRow]:
    rows = []
    outputs = list(dict.fromkeys(k for e in expected for k in e))
    for output in outputs:
        worst_abs, worst_rel, ok, notes = 0.0, 0.0, True, []
        for g, e in zip(got, expected):
            if output not in g:
                ok, worst_abs, worst_rel = False, math.nan, math.nan
                notes.append("missing from the answer")
                continue
            max_abs, max_rel, agree, note = compare(g[output], e[output], rtol, atol)
            worst_abs = max(worst_abs, max_abs) if not math.isnan(max_abs) else math.nan
            worst_rel = max(worst_rel, max_rel) if not math.isnan(max_rel) else math.nan
            ok = ok and agree
            if note:
                notes.append(note)
        rows.append(ParityRow(model, output, target, worst_abs, worst_rel, ok, "; ".join(dict.fromkeys(notes))))
    return rows


def _triton_rows(root: Path, requests: dict[str, list[dict[str, Any]]], expected: dict[str, Any],
                 latency: dict[str, dict[str, float]], skipped: dict[str, str], triton: bool | None, rtol: float,
                 atol: float, repeats: int, timeout_s: float) -> list[ParityRow]:
    from .. import _tritonserver

    if triton is False:
        skipped["triton"] = "not requested (triton=False)"
        return []
    reason = _tritonserver.unavailable_reason()
    if reason is not None:
        if triton:
            raise MissingDependency("tritonserver", "test", purpose=f"parity with a real Triton ({reason})")
        skipped["triton"] = f"tritonserver cannot run here: {reason}"
        return []
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from ..serving.remote import http_infer

    rows: list[ParityRow] = []
    server = _tritonserver.TritonServer(root, model_control="explicit").start(timeout_s=timeout_s)
    try:
        client = httpclient.InferenceServerClient(url=server.http_address, network_timeout=timeout_s)
        try:
            for name, batch in requests.items():
                try:
                    client.load_model(name)
                except InferenceServerException as exc:
                    skipped[f"{name} on triton"] = _first_line(exc.message())
                    continue

                def call(request: dict[str, Any], model: str = name) -> dict[str, Any]:
                    return http_infer(client, model, request)

                try:
                    got, latency[name]["triton"] = _timed(call, batch, repeats)
                except NbserveError as exc:
                    skipped[f"{name} on triton"] = _first_line(str(exc))
                    continue
                rows += _rows(name, "triton", got, expected[name], rtol, atol)
        finally:
            client.close()
    finally:
        server.stop()
    return rows


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "failed"
