"""Shared pieces of the benchmarks: the DESIGN.md MLP, process memory and CPU, perf_analyzer runs, and a
fallback network client.

The fallback client runs in its own interpreter so that it never shares a GIL with the server:

    python benchmarks/_common.py loadgen --url 127.0.0.1:8000 --protocol http --concurrency 16 --seconds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
MLP_SIZES = (64, 256, 16)  # DESIGN.md: a 64 -> 256 -> 16 NumPy MLP, float32, ReLU


# ----------------------------------------------------------------------------- the model
def mlp_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """Weights of the benchmark MLP, the same on every machine for a seed."""
    rng = np.random.default_rng(seed)
    n_in, n_hidden, n_out = MLP_SIZES
    return {
        "w1": (rng.standard_normal((n_in, n_hidden)) / np.sqrt(n_in)).astype(np.float32),
        "b1": (rng.standard_normal(n_hidden) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((n_hidden, n_out)) / np.sqrt(n_hidden)).astype(np.float32),
        "b2": (rng.standard_normal(n_out) * 0.1).astype(np.float32),
    }


def make_mlp(weights: dict[str, np.ndarray]):
    w1, b1, w2, b2 = weights["w1"], weights["b1"], weights["w2"], weights["b2"]

    def mlp(x):
        return np.maximum(x @ w1 + b1, 0) @ w2 + b2

    return mlp


# The same model as a hand-written Triton Python-backend model: the requests of one dynamic batch are
# concatenated and run in one call, as nbserve's batcher does, so both servers do the same work.
TRITON_MODEL_PY = '''\
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        with np.load(os.path.join(here, "weights.npz")) as w:
            self.w1, self.b1, self.w2, self.b2 = w["w1"], w["b1"], w["w2"], w["b2"]

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        y = np.maximum(x @ self.w1 + self.b1, 0) @ self.w2 + self.b2
        responses, start = [], 0
        for part in xs:
            out = pb_utils.Tensor("output_0", y[start:start + len(part)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(part)
        return responses
'''


def write_triton_mlp(repository: Path, config_pbtxt: str, weights: dict[str, np.ndarray], name: str = "mlp") -> Path:
    """A Triton repository serving the MLP with ``config_pbtxt`` (nbserve's rendering of its config)."""
    version = repository / name / "1"
    version.mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(config_pbtxt)
    (version / "model.py").write_text(TRITON_MODEL_PY)
    np.savez(version / "weights.npz", **weights)
    return repository


# ----------------------------------------------------------------------------- processes
def process_tree(pid: int) -> list[int]:
    from nbserve._tritonserver import process_tree as tree

    return tree(pid)


def rss_bytes(pids: list[int]) -> int:
    """Sum of VmRSS over ``pids`` (shared pages count once per process, as ``ps`` shows them)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (all their threads), from /proc."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICK


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    info["loadavg"] = list(os.getloadavg())
    return info


# ----------------------------------------------------------------------------- results
@dataclass
class Row:
    """One measured configuration."""

    target: str            # "raw", "nbserve", "triton"
    api: str               # "loop", "ainfer", "infer", "http", "grpc"
    concurrency: int
    client: str
    infer_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    rows_per_s: float | None = None
    spread_pct: float | None = None        # (max - min) / mean of the per-window throughputs
    client_cpu_cores: float | None = None  # CPU the client used, in cores, over its run
    server_cpu_us: float | None = None     # server CPU per inference (process tree), us
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentiles_us(latencies_ns: list[int]) -> tuple[float | None, float | None]:
    if not latencies_ns:
        return None, None
    values = np.asarray(latencies_ns, dtype=np.float64) / 1000.0
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


def closed_loop_summary(latencies_ns: list[int], finished_s: list[float], start_s: float, seconds: float) -> dict:
    """Throughput, p50/p99 and the spread of throughput over the window's thirds."""
    p50, p99 = percentiles_us(latencies_ns)
    spread = None
    if finished_s:
        thirds = np.histogram(finished_s, bins=3, range=(start_s, start_s + seconds))[0]
        if thirds.mean() > 0:
            spread = float(100 * (thirds.max() - thirds.min()) / thirds.mean())
    return {"infer_per_s": len(latencies_ns) / seconds, "p50_us": p50, "p99_us": p99, "spread_pct": spread}


# ----------------------------------------------------------------------------- perf_analyzer
_PASS = re.compile(r"Pass \[\d+\] throughput: ([0-9.]+) infer/sec")


def run_perf_analyzer(
    binary: Path,
    env: dict[str, str],
    *,
    model: str,
    address: str,
    protocol: str,
    concurrency: int,
    interval_ms: int,
    windows: int,
    timeout_s: float = 120,
) -> Row:
    """One perf_analyzer measurement at a fixed concurrency: ``windows`` windows of ``interval_ms``.

    Its stability check is turned off (a noisy shared machine can keep it from ever passing, and then
    it reports nothing); instead every window's throughput is kept and their spread reported.
    """
    row = Row(target="", api=protocol, concurrency=concurrency, client="perf_analyzer")
    csv_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pa-{os.getpid()}-{protocol}-{concurrency}.csv"
    args = [
        str(binary), "-m", model, "-u", address, "-i", protocol,
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(interval_ms),
        "--stability-percentage", "1000000", "--max-trials", str(windows),
        "-v", "-f", str(csv_path),
    ]
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        row.error = f"perf_analyzer did not finish within {timeout_s} s"
    wall_s = time.perf_counter() - started
    # communicate() reaped it, which added its CPU time to RUSAGE_CHILDREN.
    row.client_cpu_cores = (children_cpu_seconds() - cpu_before) / wall_s
    row.extra["wall_s"] = round(wall_s, 2)
    if process.returncode != 0 or not csv_path.exists():
        lines = [line for line in output.strip().splitlines() if line.strip()]
        row.error = row.error or "perf_analyzer failed: " + " | ".join(lines[-6:])
        return row
    with open(csv_path) as f:
        record = next(csv.DictReader(f))
    csv_path.unlink()
    row.infer_per_s = float(record["Inferences/Second"])
    row.p50_us = float(record["p50 latency"])
    row.p99_us = float(record["p99 latency"])
    passes = [float(v) for v in _PASS.findall(output)]
    if len(passes) > 1 and statistics.mean(passes) > 0:
        row.spread_pct = 100 * (max(passes) - min(passes)) / statistics.mean(passes)
    row.extra["windows_infer_per_s"] = passes
    return row


def children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- fallback client
def run_loadgen(
    *, url: str, protocol: str, model: str, concurrency: int, warmup_s: float, seconds: float, timeout_s: float = 120
) -> Row:
    """The fallback client: tritonclient with ``concurrency`` threads in a separate process."""
    args = [sys.executable, __file__, "loadgen", "--url", url, "--protocol", protocol, "--model", model,
            "--concurrency", str(concurrency), "--warmup", str(warmup_s), "--seconds", str(seconds)]
    row = Row(target="", api=protocol, concurrency=concurrency, client="tritonclient-threads")
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    wall_s = time.perf_counter() - started
    row.extra["wall_s"] = round(wall_s, 2)
    row.client_cpu_cores = (children_cpu_seconds() - cpu_before) / wall_s
    if done.returncode != 0:
        row.error = "loadgen failed: " + " | ".join(done.stderr.strip().splitlines()[-4:])
        return row
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row.infer_per_s, row.p50_us, row.p99_us = result["infer_per_s"], result["p50_us"], result["p99_us"]
    row.spread_pct = result.get("spread_pct")
    return row


def _loadgen_main(args: argparse.Namespace) -> None:
    if args.protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    x = np.random.default_rng(1).standard_normal((1, MLP_SIZES[0])).astype(np.float32)
    window_start = time.perf_counter() + args.warmup
    window_end = window_start + args.seconds
    latencies: list[int] = []
    finished: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        client = client_module.InferenceServerClient(url=args.url)
        tensor = client_module.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        while True:
            begin = time.perf_counter_ns()
            if begin / 1e9 >= window_end:
                break
            try:
                client.infer(args.model, [tensor])
            except Exception as exc:  # report the first failure instead of dying silently
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            end = time.perf_counter_ns()
            if begin / 1e9 >= window_start and end / 1e9 <= window_end:
                latencies.append(end - begin)
                finished.append(end / 1e9)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(errors[0])
    print(json.dumps(closed_loop_summary(latencies, finished, window_start, args.seconds)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    loadgen = sub.add_parser("loadgen", help="closed-loop tritonclient load with N threads; prints JSON")
    loadgen.add_argument("--url", required=True)
    loadgen.add_argument("--protocol", choices=["http", "grpc"], default="http")
    loadgen.add_argument("--model", default="mlp")
    loadgen.add_argument("--concurrency", type=int, default=1)
    loadgen.add_argument("--warmup", type=float, default=0.5)
    loadgen.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    _loadgen_main(args)


if __name__ == "__main__":
    main()
