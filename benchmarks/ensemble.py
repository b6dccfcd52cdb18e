"""Ensemble throughput: nbserve's DAG executor against the steps called by hand, and against real Triton.

    python benchmarks/ensemble.py            # about 3 minutes
    python benchmarks/ensemble.py --quick    # about a minute, shorter windows

The pipeline is the readability ensemble of DESIGN.md (examples/readability.py): ``preprocess``
(tokens + text features of one text) feeds ``bert`` (one attention layer in NumPy) and ``trees`` (a
20-tree random forest) in parallel; ``postprocess`` blends their scores with a weight. Every step is a
Python callable with max_batch_size 64 and dynamic batching (max_queue_delay 100 us, one instance),
because the tritonserver used here (from nvidia-pytriton) has only the Python backend: Triton runs the
very repository ``nbserve.write_repository`` writes, model.py files and all. Requests carry one text.

One run measures, at concurrency 1/16/64:

* in the kernel, client threads in this process: the ensemble through ``server.infer`` against the four
  steps called one after another by hand through ``server.infer`` (what the ensemble replaces), and
  the steps called directly without a server (``RegisteredModel.infer``, concurrency 1);
* over HTTP and gRPC, with tritonclient threads in a separate process as the client: nbserve's
  in-kernel server against the real tritonserver serving the same ensemble, back to back at each point
  (alternating which goes first, so machine noise hits both).

Every figure is printed with its ratio to its reference in the same run (these machines are noisy);
results go to benchmarks/results/ensemble-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# BLAS libraries read these once, when they load; servers started below inherit them.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as common  # noqa: E402
from _common import Row  # noqa: E402

MODEL = "readability"
DELAY_US = 100
STEPS = ("preprocess", "bert", "trees", "postprocess")


def load_readability() -> Any:
    name = "nbserve_example_readability"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "examples" / "readability.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def request_pool(n: int = 64) -> list[dict[str, np.ndarray]]:
    """One-text requests, each with its weight."""
    texts = load_readability().generated_texts(n, seed=5)
    rng = np.random.default_rng(5)
    return [{"text": np.array([[t.encode()]], dtype=object), "weight": rng.random((1, 1), dtype=np.float32)}
            for t in texts]


# ----------------------------------------------------------------------------- in the kernel
def by_hand_through_server(server: Any, request: dict[str, np.ndarray]) -> np.ndarray:
    """The four steps one after another, each a request to the server (no ensemble)."""
    tokens = server.infer("preprocess", {"text": request["text"]})
    bert = server.infer("bert", {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]})
    trees = server.infer("trees", {"input__0": tokens["features"]})
    return server.infer("postprocess", {"bert": bert["logits"], "trees": trees["output__0"],
                                        "weight": request["weight"]})["score"]


def closed_loop(call: Any, concurrency: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    """``call(i)`` from ``concurrency`` threads for ``warmup_s + seconds``; figures over the window."""
    latencies: list[int] = []
    finished: list[float] = []
    errors: list[str] = []
    start = time.perf_counter() + warmup_s
    end = start + seconds

    def worker(w: int) -> None:
        i = w
        while True:
            begin = time.perf_counter_ns()
            if begin / 1e9 >= end:
                return
            try:
                call(i)
            except Exception as exc:  # reported in the table instead of dying silently
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            done = time.perf_counter_ns()
            if begin / 1e9 >= start and done / 1e9 <= end:
                latencies.append(done - begin)  # list.append is atomic under the GIL
                finished.append(done / 1e9)
            i += concurrency

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = common.closed_loop_summary(latencies, finished, start, seconds)
    summary["error"] = errors[0] if errors else None
    return summary


def in_kernel_row(api: str, concurrency: int, summary: dict[str, Any]) -> Row:
    row = Row(target="nbserve", api=api, concurrency=concurrency, client="threads (in process)")
    row.infer_per_s, row.p50_us, row.p99_us = summary["infer_per_s"], summary["p50_us"], summary["p99_us"]
    row.spread_pct, row.error = summary["spread_pct"], summary["error"]
    return row


# ----------------------------------------------------------------------------- over the network
def run_loadgen(address: str, protocol: str, concurrency: int, warmup_s: float, seconds: float) -> Row:
    """tritonclient threads in a separate process (no GIL shared with the in-kernel server)."""
    args = [sys.executable, __file__, "loadgen", "--url", address, "--protocol", protocol,
            "--concurrency", str(concurrency), "--warmup", str(warmup_s), "--seconds", str(seconds)]
    row = Row(target="", api=protocol, concurrency=concurrency, client="tritonclient-threads")
    cpu_before = common.children_cpu_seconds()
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=120 + warmup_s + seconds)
    wall_s = time.perf_counter() - started
    row.client_cpu_cores = (common.children_cpu_seconds() - cpu_before) / wall_s
    if done.returncode != 0:
        row.error = "loadgen failed: " + " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return row
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row.infer_per_s, row.p50_us, row.p99_us = result["infer_per_s"], result["p50_us"], result["p99_us"]
    row.spread_pct = result.get("spread_pct")
    return row


def _loadgen_main(args: argparse.Namespace) -> None:
    client_module: Any
    if args.protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    pool = request_pool()
    window_start = time.perf_counter() + args.warmup
    window_end = window_start + args.seconds
    latencies: list[int] = []
    finished: list[float] = []
    errors: list[str] = []

    def worker(w: int) -> None:
        client = client_module.InferenceServerClient(url=args.url)
        requests = []
        for request in pool:
            tensors = [client_module.InferInput("text", [1, 1], "BYTES"), client_module.InferInput("weight", [1, 1], "FP32")]
            tensors[0].set_data_from_numpy(request["text"])
            tensors[1].set_data_from_numpy(request["weight"])
            requests.append(tensors)
        i = w
        while True:
            begin = time.perf_counter_ns()
            if begin / 1e9 >= window_end:
                break
            try:
                client.infer(MODEL, requests[i % len(requests)])
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            end = time.perf_counter_ns()
            if begin / 1e9 >= window_start and end / 1e9 <= window_end:
                latencies.append(end - begin)
                finished.append(end / 1e9)
            i += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(errors[0])
    print(json.dumps(common.closed_loop_summary(latencies, finished, window_start, args.seconds)))


def check_outputs(address: str, expected: np.ndarray, pool: list[dict[str, np.ndarray]]) -> str | None:
    """None when the server's ensemble answers what the steps by hand answer, else what differed."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=address)
    try:
        got = []
        for request in pool[:8]:
            tensors = [httpclient.InferInput("text", [1, 1], "BYTES"), httpclient.InferInput("weight", [1, 1], "FP32")]
            tensors[0].set_data_from_numpy(request["text"])
            tensors[1].set_data_from_numpy(request["weight"])
            got.append(client.infer(MODEL, tensors).as_numpy("score"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    got_array = np.concatenate(got)
    if not np.allclose(got_array, expected[:8], rtol=1e-4, atol=1e-5):
        return f"scores differ from the steps by hand (max abs diff {np.max(np.abs(got_array - expected[:8])):.3g})"
    return None


# ----------------------------------------------------------------------------- output
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float | None, reference: float | None) -> str:
    return "-" if not value or not reference else f"{value / reference:.2f}x"


def print_rows(title: str, rows: list[Row], reference: Any) -> list[str]:
    """Rows with their throughput and p50 as ratios to ``reference(row)``."""
    lines = [title, f"{'target':<8} {'api':<16} {'conc':>4} {'infer/s':>8} {'ratio':>7} {'p50 us':>8} {'ratio':>7} "
             f"{'p99 us':>8}  reference", "-" * 96]
    for row in rows:
        if row.error:
            lines.append(f"{row.target:<8} {row.api:<16} {row.concurrency:>4} ERROR: {row.error}")
            continue
        ref = reference(row)
        lines.append(
            f"{row.target:<8} {row.api:<16} {row.concurrency:>4} {_fmt(row.infer_per_s):>8} "
            f"{_ratio(row.infer_per_s, ref.infer_per_s if ref else None):>7} {_fmt(row.p50_us):>8} "
            f"{_ratio(row.p50_us, ref.p50_us if ref else None):>7} {_fmt(row.p99_us):>8}  "
            f"{f'{ref.target} {ref.api} c={ref.concurrency}' if ref else '-'}")
    print("\n".join(lines), flush=True)
    return lines


def step_batches(server: Any) -> dict[str, dict[int, int]]:
    """Executions per batch size of every step model (Triton's batch_stats), since the server started."""
    out = {}
    for step in STEPS:
        stats = server.core.model_statistics(step)["model_stats"][0]["batch_stats"]
        out[step] = {b["batch_size"]: b["compute_infer"]["count"] for b in stats}
    return out


# ----------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    loadgen = sub.add_parser("loadgen", help="(internal) closed-loop tritonclient load; prints JSON")
    loadgen.add_argument("--url", required=True)
    loadgen.add_argument("--protocol", choices=["http", "grpc"], default="http")
    loadgen.add_argument("--concurrency", type=int, default=1)
    loadgen.add_argument("--warmup", type=float, default=0.5)
    loadgen.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="short windows: about a minute")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrency levels")
    parser.add_argument("--no-triton", action="store_true", help="skip the real tritonserver")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory for the JSON results")
    args = parser.parse_args(argv)
    if args.command == "loadgen":
        _loadgen_main(args)
        return 0

    import nbserve
    from nbserve import _tritonserver
    from nbserve.serving.server import Server

    started = time.perf_counter()
    levels = [int(c) for c in args.concurrency.split(",")]
    warmup_s, window_s = (0.3, 1.0) if args.quick else (0.5, 3.0)
    readability = load_readability()

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", flush=True)

    registry = readability.register_models(nbserve.Registry(), python_only=True, delay_us=DELAY_US)
    registry.register(readability.build_ensemble())
    pool = request_pool()
    texts = np.concatenate([r["text"] for r in pool])
    weights = np.concatenate([r["weight"] for r in pool])
    expected = readability.by_hand(registry, texts, weights)
    report: dict[str, Any] = {
        "benchmark": "ensemble", "date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
        "machine": common.machine(), "settings": {"warmup_s": warmup_s, "window_s": window_s, "levels": levels},
        "pipeline": "examples/readability.py, python_only: preprocess -> (bert, trees) -> postprocess; "
                    f"max_batch_size 64, dynamic_batching {DELAY_US} us, 1 instance per step; one text per request",
        "ensemble_pbtxt": registry.get(MODEL).pbtxt, "notes": [],
    }
    kernel_rows: list[Row] = []
    network_rows: list[Row] = []
    workdir = Path(tempfile.mkdtemp(prefix="nbserve-ensemble-bench-"))
    server = Server(registry, metrics=False).start()
    triton = None
    try:
        # --- in the kernel
        progress("direct calls without a server (concurrency 1)")
        direct = closed_loop(lambda i: readability.by_hand(registry, pool[i % 64]["text"], pool[i % 64]["weight"]),
                             1, warmup_s, window_s)
        kernel_rows.append(in_kernel_row("steps direct", 1, direct))
        for level in levels:
            progress(f"in the kernel, concurrency {level}")
            hand = closed_loop(lambda i: by_hand_through_server(server, pool[i % 64]), level, warmup_s, window_s)
            kernel_rows.append(in_kernel_row("steps by hand", level, hand))
            ens = closed_loop(lambda i: server.infer(MODEL, pool[i % 64]), level, warmup_s, window_s)
            kernel_rows.append(in_kernel_row("ensemble", level, ens))

        # --- over the network, against Triton
        targets = {"nbserve": (server.http_address, server.grpc_address)}
        if args.no_triton:
            report["notes"].append("--no-triton: no Triton reference")
        elif not _tritonserver.available():
            report["notes"].append(f"real tritonserver unavailable: {_tritonserver.unavailable_reason()}")
        else:
            progress("writing the repository and starting tritonserver")
            repository = nbserve.write_repository(workdir / "repo", list(registry))
            triton = _tritonserver.TritonServer(repository).start(timeout_s=120)
            report["triton_ready_s"] = triton.ready_s
            targets["triton"] = (triton.http_address, triton.grpc_address)
        for name, (http_address, _) in targets.items():
            problem = check_outputs(http_address, expected, pool)
            if problem:
                report["notes"].append(f"{name}'s ensemble outputs are wrong: {problem}")
        for turn, (protocol, level) in enumerate((p, c) for p in ("http", "grpc") for c in levels):
            order = list(targets) if turn % 2 == 0 else list(reversed(targets))
            for name in order:
                progress(f"{name} {protocol}, concurrency {level}")
                address = targets[name][0] if protocol == "http" else targets[name][1]
                row = run_loadgen(address, protocol, level, warmup_s, window_s)
                row.target = name
                network_rows.append(row)
        report["nbserve_step_batches"] = step_batches(server)
    finally:
        server.stop()
        if triton is not None:
            triton.stop()

    print()
    by_key = {(r.api, r.concurrency): r for r in kernel_rows}
    lines = print_rows("In the kernel: the ensemble against the steps called one after another by hand",
                       kernel_rows, lambda r: by_key.get(("steps by hand", r.concurrency)) if r.api == "ensemble" else
                       (by_key.get(("steps by hand", 1)) if r.api == "steps direct" else None))
    print()
    triton_rows = {(r.api, r.concurrency): r for r in network_rows if r.target == "triton"}
    lines += [""] + print_rows("Over the network: nbserve's ensemble against Triton's, same repository",
                               network_rows, lambda r: triton_rows.get((r.api, r.concurrency)) if r.target == "nbserve" else None)
    print()
    summary = []
    for level in levels:
        ens, hand = by_key.get(("ensemble", level)), by_key.get(("steps by hand", level))
        if ens and hand and ens.infer_per_s and hand.infer_per_s:
            summary.append(f"ensemble / steps by hand, in the kernel, c={level}: {ens.infer_per_s / hand.infer_per_s:.2f}x")
    for protocol in ("http", "grpc"):
        for level in levels:
            mine = next((r for r in network_rows if r.target == "nbserve" and (r.api, r.concurrency) == (protocol, level)), None)
            ref = triton_rows.get((protocol, level))
            if mine and ref and mine.infer_per_s and ref.infer_per_s:
                summary.append(f"nbserve / Triton, {protocol}, c={level}: {mine.infer_per_s / ref.infer_per_s:.2f}x")
    print("Ratios (throughput):")
    for line in summary:
        print("  " + line)
    for note in report["notes"]:
        print("note: " + note)
    print("nbserve step batch sizes over the run:", json.dumps(report.get("nbserve_step_batches", {})))
    report["rows"] = [r.as_dict() for r in kernel_rows + network_rows]
    report["ratios"] = summary
    report["table"] = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ensemble-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    progress(f"results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
