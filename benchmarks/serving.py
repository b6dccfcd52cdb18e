"""nbserve against the real Triton Inference Server, on the DESIGN.md MLP, in one run.

    python benchmarks/serving.py            # about 3-5 minutes
    python benchmarks/serving.py --quick    # under a minute, shorter windows

One run measures, on a 64 -> 256 -> 16 NumPy MLP (float32, ReLU, weights from a fixed seed) with
max_batch_size 64 and dynamic batching (max_queue_delay_microseconds 100):

* the raw model called in a loop at batch 1 and batch 64 (rows/s);
* nbserve's in-process API: ``server.ainfer`` from asyncio tasks on one loop and ``server.infer`` from
  threads, at concurrency 1/16/64;
* nbserve's HTTP and gRPC endpoints and the real tritonserver (from nvidia-pytriton) serving the same
  model as a Python-backend model with the same config, at concurrency 1/16/64, with perf_analyzer as
  the client when available (else tritonclient threads in a separate process); nbserve and Triton are
  measured back to back at each point, alternating which goes first, so machine noise hits both;
* readiness (in-kernel serve() as the median of 5 fresh interpreters after a first one, subprocess
  server, Triton) and the RSS of each server's process tree.

BLAS runs single-threaded in every process (``--blas-threads 1``, the default; ``0`` keeps the library's
choice): OpenBLAS switches to multithreaded GEMM at about batch 64, which on a busy 2-core machine stalls
a batch for tens of milliseconds, in nbserve and Triton alike, and would make the comparison a lottery.

Every figure is also printed as a ratio to Triton's in the same run, because these machines are noisy.
Results go to benchmarks/results/serving-<date>.json as well.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any


def _blas_threads(argv: list[str]) -> str:
    """``--blas-threads N`` from the command line (default 1), read before NumPy is imported."""
    for i, arg in enumerate(argv):
        if arg == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--blas-threads="):
            return arg.split("=", 1)[1]
    return "1"


# BLAS libraries read these once, when they load. Servers started below inherit them (tritonserver's
# Python stub and nbserve's subprocess server alike), so every server runs the model the same way.
BLAS_THREADS = _blas_threads(sys.argv[1:])
if BLAS_THREADS != "0":
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = BLAS_THREADS

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from _common import Row  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL = "mlp"
CONFIG = {"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 100}}


# ----------------------------------------------------------------------------- measurements
def measure_raw(mlp, batch: int, warmup_s: float, seconds: float) -> Row:
    x = np.random.default_rng(2).standard_normal((batch, 64)).astype(np.float32)
    deadline = time.perf_counter() + warmup_s
    while time.perf_counter() < deadline:
        mlp(x)
    latencies = []
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        begin = time.perf_counter_ns()
        mlp(x)
        latencies.append(time.perf_counter_ns() - begin)
        now = time.perf_counter()
    elapsed = now - start
    p50, p99 = common.percentiles_us(latencies)
    calls = len(latencies) / elapsed
    return Row(target="raw", api=f"loop b={batch}", concurrency=1, client="in-process", infer_per_s=calls,
               p50_us=p50, p99_us=p99, rows_per_s=calls * batch)


def _inference_count_local(server) -> int:
    stats = server.core.model_statistics(MODEL)["model_stats"]
    return sum(int(s["inference_count"]) for s in stats)


def measure_ainfer(server, concurrency: int, warmup_s: float, seconds: float) -> Row:
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    latencies: list[int] = []
    finished: list[float] = []

    async def run() -> float:
        start = time.perf_counter() + warmup_s
        end = start + seconds

        async def worker() -> None:
            while True:
                begin = time.perf_counter_ns()
                if begin / 1e9 >= end:
                    return
                await server.ainfer(MODEL, {"x": x})
                done = time.perf_counter_ns()
                if begin / 1e9 >= start and done / 1e9 <= end:
                    latencies.append(done - begin)
                    finished.append(done / 1e9)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return start

    return _in_process_row("ainfer", concurrency, seconds, latencies, finished, lambda: asyncio.run(run()), server)


def measure_infer_threads(server, concurrency: int, warmup_s: float, seconds: float) -> Row:
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    latencies: list[int] = []
    finished: list[float] = []

    def run() -> float:
        start = time.perf_counter() + warmup_s
        end = start + seconds

        def worker() -> None:
            while True:
                begin = time.perf_counter_ns()
                if begin / 1e9 >= end:
                    return
                server.infer(MODEL, {"x": x})
                done = time.perf_counter_ns()
                if begin / 1e9 >= start and done / 1e9 <= end:
                    latencies.append(done - begin)  # list.append is atomic under the GIL
                    finished.append(done / 1e9)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return start

    return _in_process_row("infer", concurrency, seconds, latencies, finished, run, server)


def _in_process_row(api, concurrency, seconds, latencies, finished, run, server) -> Row:
    row = Row(target="nbserve", api=api, concurrency=concurrency,
              client="asyncio tasks" if api == "ainfer" else "threads")
    pids = [os.getpid()]
    cpu0, count0 = common.cpu_seconds(pids), _inference_count_local(server)
    try:
        start = run()
    except Exception as exc:  # report it in the table; the other measurements still run
        row.error = f"{type(exc).__name__}: {exc}"
        return row
    cpu1, count1 = common.cpu_seconds(pids), _inference_count_local(server)
    summary = common.closed_loop_summary(latencies, finished, start, seconds)
    row.infer_per_s, row.p50_us, row.p99_us = summary["infer_per_s"], summary["p50_us"], summary["p99_us"]
    row.spread_pct = summary["spread_pct"]
    if count1 > count0:
        row.server_cpu_us = 1e6 * (cpu1 - cpu0) / (count1 - count0)  # client and server share this process
    return row


def inference_count_http(address: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/models/{MODEL}/stats", timeout=5) as response:
            stats = json.load(response)["model_stats"]
        return sum(int(s["inference_count"]) for s in stats)
    except Exception:  # a server without the statistics extension: leave the CPU column empty
        return None


class Target:
    """A server measured over the network: its addresses and the processes that are it."""

    def __init__(self, name: str, http_address: str | None, grpc_address: str | None, pids) -> None:
        self.name = name
        self.addresses = {"http": http_address, "grpc": grpc_address}
        self.pids = pids  # callable -> list of pids

    def measure(self, protocol: str, concurrency: int, client: dict[str, Any], settings: dict[str, Any]) -> Row:
        address = self.addresses[protocol]
        if address is None:
            return Row(target=self.name, api=protocol, concurrency=concurrency, client=client["name"],
                       error=f"{self.name} has no {protocol} endpoint in this run")
        pids = self.pids()
        cpu0, count0 = common.cpu_seconds(pids), inference_count_http(self.addresses["http"] or "")
        if client["name"] == "perf_analyzer":
            row = common.run_perf_analyzer(client["path"], client["env"], model=MODEL, address=address,
                                           protocol=protocol, concurrency=concurrency,
                                           interval_ms=settings["pa_interval_ms"], windows=settings["pa_windows"])
        else:
            row = common.run_loadgen(url=address, protocol=protocol, model=MODEL, concurrency=concurrency,
                                     warmup_s=settings["warmup_s"], seconds=settings["window_s"])
        cpu1, count1 = common.cpu_seconds(pids), inference_count_http(self.addresses["http"] or "")
        row.target = self.name
        if count0 is not None and count1 is not None and count1 > count0:
            row.server_cpu_us = 1e6 * (cpu1 - cpu0) / (count1 - count0)
        return row


def check_outputs(address: str, mlp) -> str | None:
    """None when the server's answer over HTTP equals the model's, else what differed."""
    import tritonclient.http as httpclient

    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    client = httpclient.InferenceServerClient(url=address)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    try:
        got = client.infer(MODEL, [tensor]).as_numpy("output_0")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    if got is None or got.shape != (3, 16) or not np.allclose(got, mlp(x), rtol=1e-4, atol=1e-5):
        return f"outputs differ from the model's (max abs diff {np.max(np.abs(got - mlp(x))) if got is not None and got.shape == (3, 16) else got!r})"
    return None


def export_check(registry, workdir: Path) -> dict[str, Any]:
    """Does nbserve's own export of the registered MLP load and answer correctly in tritonserver?"""
    from nbserve import _tritonserver
    from nbserve.repository import write_repository

    repository = write_repository(workdir / "export", registry.models())
    server = _tritonserver.TritonServer(repository)
    try:
        server.start(timeout_s=60)
    except Exception as exc:
        errors = [line for line in str(exc).splitlines() if "rror" in line and "CudaDriver" not in line]
        return {"loads": False, "error": (errors[0] if errors else str(exc))[:400]}
    try:
        problem = check_outputs(server.http_address, common.make_mlp(common.mlp_weights()))
        return {"loads": True, "outputs_match": problem is None, "error": problem}
    finally:
        server.stop()


# ----------------------------------------------------------------------------- output
def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def reference_for(row: dict[str, Any], triton: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any] | None:
    """Triton's row that ``row`` is compared with (same protocol and concurrency; HTTP for the rest)."""
    if row["target"] == "raw":
        batch = int(row["api"].split("=")[1])
        return triton.get(("http", 1 if batch == 1 else 64))
    protocol = row["api"] if row["api"] in ("http", "grpc") else "http"
    return triton.get((protocol, row["concurrency"]))


def median_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, api, concurrency): the round with the median throughput, in first-seen
    order; every round's throughput is kept in ``extra["rounds_infer_per_s"]``."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["api"], row["concurrency"]), []).append(row)
    kept = []
    for group in groups.values():
        measured = sorted((r for r in group if r["infer_per_s"] and not r.get("error")), key=lambda r: r["infer_per_s"])
        chosen = dict(measured[(len(measured) - 1) // 2] if measured else group[-1])
        if len(group) > 1:
            chosen["extra"] = {**chosen.get("extra", {}), "rounds_infer_per_s": [r["infer_per_s"] for r in group]}
        kept.append(chosen)
    return kept


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's figures divided by Triton's (see :func:`reference_for`), as ``x_triton``."""
    triton = {(r["api"], r["concurrency"]): r for r in rows if r["target"] == "triton" and r["infer_per_s"]}
    for row in rows:
        ref = reference_for(row, triton)
        if ref is None or row.get("error"):
            row["x_triton"] = None
            continue
        # The raw model's batch-64 calls are compared by rows (= requests of one row each).
        throughput = row["rows_per_s"] if row["target"] == "raw" else row["infer_per_s"]
        row["x_triton"] = {
            "infer_per_s": throughput / ref["infer_per_s"] if throughput and ref["infer_per_s"] else None,
            "p50_us": row["p50_us"] / ref["p50_us"] if row["p50_us"] and ref["p50_us"] else None,
            "p99_us": row["p99_us"] / ref["p99_us"] if row["p99_us"] and ref["p99_us"] else None,
            "reference": f"triton {ref['api']} c={ref['concurrency']}",
        }


def print_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'target':<8} {'api':<9} {'conc':>4} {'client':<14} {'infer/s':>9} {'xTriton':>7} {'p50 us':>8} "
              f"{'xTriton':>7} {'p99 us':>8} {'xTriton':>7} {'rows/s':>10} {'spread':>6} {'cli CPU':>7} {'srv us/inf':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        ratios = row.get("x_triton") or {}
        if row.get("error"):
            lines.append(f"{row['target']:<8} {row['api']:<9} {row['concurrency']:>4} {row['client']:<14} ERROR: {row['error']}")
            continue
        spread = f"{row['spread_pct']:.0f}%" if row.get("spread_pct") is not None else "-"
        cpu = f"{row['client_cpu_cores']:.2f}" if row.get("client_cpu_cores") is not None else "-"
        lines.append(
            f"{row['target']:<8} {row['api']:<9} {row['concurrency']:>4} {row['client']:<14} "
            f"{_fmt(row['infer_per_s']):>9} {_ratio(ratios.get('infer_per_s')):>7} "
            f"{_fmt(row['p50_us']):>8} {_ratio(ratios.get('p50_us')):>7} "
            f"{_fmt(row['p99_us']):>8} {_ratio(ratios.get('p99_us')):>7} "
            f"{_fmt(row.get('rows_per_s')):>10} {spread:>6} {cpu:>7} {_fmt(row.get('server_cpu_us')):>10}"
        )
    text = "\n".join(lines)
    print(text)
    return text


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


# A notebook about to call serve(): nbserve imported (what %load_ext does) and the MLP registered. The
# figure is serve()'s own time; everything before it is the user's earlier cells.
_FRESH_KERNEL = """
import json, sys, time
sys.path.insert(0, {here!r})
import numpy as np
import _common as common
import nbserve
from nbserve.registry import Registry

registry = Registry()
registry.register(common.make_mlp(common.mlp_weights()), name={model!r}, example=np.zeros((2, 64), np.float32),
                  **json.loads({config!r}))
begin = time.perf_counter()
server = nbserve.serve(registry)
ready_s = time.perf_counter() - begin
server.stop()
print(json.dumps({{"ready_s": ready_s}}))
"""


def measure_fresh_kernel_ready(times: int) -> dict[str, Any]:
    """``nbserve.serve()``'s time to ready in fresh interpreters: one first start, then ``times`` more.

    Why fresh ones: serve() in a kernel that never served pays for importing aiohttp, grpc and the
    endpoints (~90% of its time); a single start is one draw from a noisy machine, so the run keeps
    the median of several. The first start is reported apart: after installing or changing nbserve
    it compiles nbserve's modules (Python caches them for every later kernel) and reads files the
    OS has not cached yet. The children may write that bytecode cache even where
    PYTHONDONTWRITEBYTECODE is set here (it is on some CI machines, and made every start compile
    the modules again).
    """
    script = _FRESH_KERNEL.format(here=str(HERE), model=MODEL, config=json.dumps(CONFIG))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    readings = []
    for _ in range(times + 1):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the fresh interpreter failed (exit {done.returncode}): {done.stderr.strip()[-800:]}")
        readings.append(json.loads(done.stdout.strip().splitlines()[-1])["ready_s"])
    return {"first_s": readings[0], "then_s": readings[1:], "median_s": statistics.median(readings[1:])}


# ----------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows: under a minute")
    parser.add_argument("--client", choices=["auto", "perf_analyzer", "tritonclient"], default="auto",
                        help="network client (auto: perf_analyzer when it can run here)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrency levels")
    parser.add_argument("--subprocess", action="store_true",
                        help="also measure the subprocess server over the network (it is always started for "
                        "its readiness time and memory)")
    parser.add_argument("--no-triton", action="store_true", help="skip the real tritonserver")
    parser.add_argument("--blas-threads", default="1",
                        help="OPENBLAS/OMP/MKL_NUM_THREADS for this process and every server (default 1; 0 leaves "
                        "the library default, whose multithreaded GEMM at batch 64 stalls for tens of ms on a "
                        "busy 2-core machine)")
    parser.add_argument("--only", choices=["http", "grpc"], default=None,
                        help="measure only this network protocol (nbserve and Triton): no in-process rows, no "
                        "subprocess server")
    parser.add_argument("--rounds", type=int, default=None,
                        help="repeat the in-process and network measurements this many times, alternating who goes "
                        "first, and keep each row's median round (default: 3, or 1 with --quick)")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory for the JSON results")
    args = parser.parse_args(argv)
    run_started = time.perf_counter()
    levels = [int(c) for c in args.concurrency.split(",")]
    rounds = max(1, args.rounds if args.rounds is not None else (1 if args.quick else 3))
    settings = (
        {"warmup_s": 0.2, "window_s": 1.0, "raw_s": 0.5, "pa_interval_ms": 800, "pa_windows": 3}
        if args.quick else
        {"warmup_s": 0.5, "window_s": 3.0, "raw_s": 2.0, "pa_interval_ms": 3000, "pa_windows": 3}
    )
    report: dict[str, Any] = {
        "benchmark": "serving", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick, "settings": settings, "machine": common.machine(), "nbserve_commit": _git_commit(),
        "model": "MLP 64->256->16 float32 ReLU, seed 0; max_batch_size 64, dynamic_batching max_queue_delay 100 us",
        "notes": [], "blas_threads": BLAS_THREADS if BLAS_THREADS != "0" else "library default",
        "rounds": rounds,
    }
    class Rows(list):
        """Prints each row as it is measured, so a crash of the in-kernel server still shows what came before."""

        def append(self, row: Row) -> None:
            super().append(row)
            figures = (f"{row.infer_per_s:,.0f} infer/s, p50 {row.p50_us or 0:,.0f} us, p99 {row.p99_us or 0:,.0f} us"
                       if row.error is None else f"ERROR {row.error}")
            print(f"         -> {row.target} {row.api} c={row.concurrency}: {figures}", flush=True)

    rows: list[Row] = Rows()

    def note(text: str) -> None:
        print(f"note: {text}", flush=True)
        report["notes"].append(text)

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - run_started:6.1f} s] {text}", flush=True)

    weights = common.mlp_weights()
    mlp = common.make_mlp(weights)
    readiness: dict[str, Any] = {}

    # --- the raw model
    progress("raw model")
    for batch in (1, 64):
        rows.append(measure_raw(mlp, batch, settings["warmup_s"], settings["raw_s"]))

    # --- readiness of serve() in a fresh kernel, before anything else runs (as Triton's, below)
    progress("nbserve serve() readiness in 1 + 5 fresh interpreters")
    fresh = measure_fresh_kernel_ready(5)
    readiness["nbserve_thread_fresh_s"] = fresh["then_s"]
    readiness["nbserve_thread_first_s"] = fresh["first_s"]
    readiness["nbserve_thread_s"] = fresh["median_s"]

    # --- clients and the reference server
    from nbserve import _tritonserver
    from nbserve.registry import Registry

    client: dict[str, Any] = {"name": "tritonclient-threads"}
    if args.client in ("auto", "perf_analyzer"):
        path = _tritonserver.perf_analyzer_path()
        if path is not None:
            client = {"name": "perf_analyzer", "path": path, "env": _tritonserver.perf_analyzer_env()}
        elif args.client == "perf_analyzer":
            print(f"perf_analyzer is not available: {_tritonserver.perf_analyzer_unavailable_reason()}")
            return 2
        else:
            note(f"perf_analyzer unavailable ({_tritonserver.perf_analyzer_unavailable_reason()}); "
                 "using tritonclient threads in a separate process")
    report["client"] = client["name"] + (f" {_tritonserver.PERF_ANALYZER_TRITONCLIENT}" if client["name"] == "perf_analyzer" else "")
    progress(f"network client: {report['client']}")

    registry = Registry()
    model = registry.register(mlp, name=MODEL, example=np.zeros((2, 64), np.float32), **CONFIG)
    report["config_pbtxt"] = model.pbtxt
    workdir = Path(tempfile.mkdtemp(prefix="nbserve-bench-"))
    memory: dict[str, Any] = {}
    triton = None
    targets: dict[str, Target] = {}
    server = sub = None
    try:
        if args.no_triton:
            note("--no-triton: no Triton reference, so no ratios")
        elif not _tritonserver.available():
            note(f"real tritonserver unavailable: {_tritonserver.unavailable_reason()}")
        else:
            progress("starting tritonserver")
            repository = common.write_triton_mlp(workdir / "triton", model.pbtxt, weights)
            triton = _tritonserver.TritonServer(repository).start(timeout_s=60)
            readiness["triton_s"] = triton.ready_s
            problem = check_outputs(triton.http_address, mlp)
            if problem:
                note(f"Triton's outputs are wrong: {problem}")
            memory["triton_at_ready"] = common.rss_bytes(common.process_tree(triton.pid))
            targets["triton"] = Target("triton", triton.http_address, triton.grpc_address,
                                       lambda: common.process_tree(triton.pid))

        # --- nbserve in the kernel (this process)
        from nbserve.serving.server import Server

        has = {name: importlib.util.find_spec(f"nbserve.serving.{name}") is not None for name in ("http", "grpc", "metrics")}
        for name, present in has.items():
            if not present:
                note(f"nbserve/serving/{name}.py does not exist yet: nbserve runs without its {name} endpoint")
        memory["benchmark_process_before_serve"] = common.rss_bytes([os.getpid()])
        progress("starting nbserve (in-kernel thread mode)")
        begin = time.perf_counter()
        server = Server(registry, http=has["http"], grpc=has["grpc"], metrics=has["metrics"]).start(timeout_s=60)
        readiness["nbserve_thread_this_process_s"] = time.perf_counter() - begin
        memory["nbserve_thread_at_ready"] = common.rss_bytes([os.getpid()])
        if has["http"]:
            problem = check_outputs(server.http_address, mlp)
            if problem:
                note(f"nbserve's HTTP outputs are wrong: {problem}")
        targets["nbserve"] = Target("nbserve", server.http_address if has["http"] else None,
                                    server.grpc_address if has["grpc"] else None, lambda: [os.getpid()])

        # --- in-process API and the network, nbserve and Triton back to back, alternating who goes
        # first; with several rounds each row keeps its median round (the machine's noise moves single
        # windows by +-15%)
        flip = False
        for round_number in range(1, rounds + 1):
            if rounds > 1:
                progress(f"round {round_number} of {rounds}")
            for level in levels if args.only is None else ():
                progress(f"in-process ainfer/infer, concurrency {level}")
                rows.append(measure_ainfer(server, level, settings["warmup_s"], settings["window_s"]))
                rows.append(measure_infer_threads(server, level, settings["warmup_s"], settings["window_s"]))
            for protocol in ("http", "grpc") if args.only is None else (args.only,):
                for level in levels:
                    order = ["nbserve", "triton"] if not flip else ["triton", "nbserve"]
                    flip = not flip
                    for name in order:
                        if name in targets:
                            progress(f"{name} {protocol}, concurrency {level}")
                            rows.append(targets[name].measure(protocol, level, client, settings))
                    if triton is not None and "triton" in targets and not triton.is_running:
                        code = triton.returncode
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        note(f"tritonserver stopped during the run ({how}); its log ends: "
                             + " | ".join(triton.log.strip().splitlines()[-8:]))
                        del targets["triton"]
        memory["nbserve_thread_after_load"] = common.rss_bytes([os.getpid()])
        if triton is not None and triton.is_running:
            memory["triton_after_load"] = common.rss_bytes(common.process_tree(triton.pid))
        server.stop()
        server = None

        # --- the subprocess server: readiness, memory, and optionally its throughput
        if args.only is not None:
            pass  # --only: the network protocol alone
        elif has["http"] and has["grpc"]:
            from nbserve.serving.child import SubprocessServer

            progress("starting nbserve (subprocess mode)")
            begin = time.perf_counter()
            try:
                sub = SubprocessServer(registry).start(timeout_s=60)
            except Exception as exc:
                note(f"the subprocess server did not start: {type(exc).__name__}: {exc}")
            else:
                readiness["nbserve_subprocess_s"] = time.perf_counter() - begin
                memory["nbserve_subprocess_at_ready"] = common.rss_bytes(common.process_tree(sub.process.pid))
                if args.subprocess:
                    target = Target("nbs-sub", sub.http_address, sub.grpc_address,
                                    lambda: common.process_tree(sub.process.pid))
                    for protocol in ("http", "grpc"):
                        for level in levels:
                            progress(f"nbserve subprocess {protocol}, concurrency {level}")
                            rows.append(target.measure(protocol, level, client, settings))
                    memory["nbserve_subprocess_after_load"] = common.rss_bytes(common.process_tree(sub.process.pid))
                sub.stop()
                sub = None
        else:
            note("subprocess mode not measured: it needs the HTTP and gRPC frontends")

        if triton is not None and triton.is_running and not args.quick:
            progress("does nbserve's own export of the MLP load in tritonserver?")
            report["export_in_triton"] = export_check(registry, workdir)
    finally:
        for running in (server, sub, triton):
            if running is not None:
                running.stop()
        registry.clear()
        shutil.rmtree(workdir, ignore_errors=True)

    report["readiness_s"] = readiness
    report["rss_bytes"] = memory
    report["rows"] = median_rounds([row.as_dict() for row in rows])
    add_ratios(report["rows"])
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["duration_s"] = round(time.perf_counter() - run_started, 1)

    print()
    print(f"MLP 64->256->16, max_batch_size 64, max_queue_delay 100 us; client for http/grpc: {report['client']}; "
          f"BLAS threads: {report['blas_threads']}")
    print(f"machine: {report['machine'].get('cpu', '?')}, {report['machine']['cpus']} CPUs, "
          f"load {report['machine']['loadavg'][0]:.1f} at start / {report['machine']['loadavg_end'][0]:.1f} at end")
    report["table"] = print_table(report["rows"])
    print("xTriton: against Triton at the same protocol and concurrency (HTTP for in-process rows; raw loop: its "
          "rows/s vs HTTP c=1 for b=1 and vs HTTP c=64 for b=64). spread: (max-min)/mean of the per-window throughputs. cli CPU: cores "
          "the client used. srv us/inf: server process-tree CPU per inference (in-process rows: client+server).")
    print()
    for key, label in (("nbserve_thread_s", "nbserve in-kernel serve() ready"),
                       ("nbserve_subprocess_s", "nbserve subprocess ready"), ("triton_s", "tritonserver ready")):
        value = readiness.get(key)
        ratio = f" ({value / readiness['triton_s']:.2f}x Triton)" if value and readiness.get("triton_s") else ""
        how = ""
        if key == "nbserve_thread_s" and "nbserve_thread_fresh_s" in readiness:
            fresh = readiness["nbserve_thread_fresh_s"]
            how = (f"  median of {len(fresh)} fresh interpreters, {min(fresh):.2f}-{max(fresh):.2f} s "
                   f"(the first one {readiness['nbserve_thread_first_s']:.2f} s)")
            if "nbserve_thread_this_process_s" in readiness:
                how += f"; in this process {readiness['nbserve_thread_this_process_s']:.2f} s"
        print(f"{label:<34} {'-' if value is None else f'{value:.2f} s'}{ratio}{how}")
    for key, label in (("nbserve_thread_at_ready", "RSS nbserve in-kernel (whole process)"),
                       ("nbserve_thread_after_load", "  after load"),
                       ("nbserve_subprocess_at_ready", "RSS nbserve subprocess tree"),
                       ("nbserve_subprocess_after_load", "  after load"),
                       ("triton_at_ready", "RSS tritonserver tree"), ("triton_after_load", "  after load")):
        if key in memory:
            print(f"{label:<38} {memory[key] / 2**20:7.0f} MiB")
    if "benchmark_process_before_serve" in memory:
        print(f"{'  (this process before serve():':<38} {memory['benchmark_process_before_serve'] / 2**20:7.0f} MiB)")
    if "export_in_triton" in report:
        print(f"nbserve's export in tritonserver: {report['export_in_triton']}")
    for text in report["notes"]:
        print(f"note: {text}")
    print(f"whole run: {report['duration_s']:.0f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"serving-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
