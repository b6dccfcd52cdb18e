"""nbserve's load generator next to Triton's perf_analyzer, on the same server with the same settings.

    python benchmarks/bench_accuracy.py            # about 4 minutes
    python benchmarks/bench_accuracy.py --quick    # about a minute

The server is the real tritonserver (from nvidia-pytriton) serving the DESIGN.md MLP (64 -> 256 -> 16,
max_batch_size 64, dynamic batching with a 100 us queue delay, BLAS single-threaded), the model of
benchmarks/serving.py; ``--target nbserve`` measures nbserve's own subprocess server instead. At
each protocol (HTTP, gRPC) and concurrency, perf_analyzer and ``nbserve.bench`` measure the same
number of windows of the same length (perf_analyzer's stability check turned off, as in
benchmarks/_common.py; nbserve's the same way) and back to back, alternating which goes first, for
``--rounds`` rounds; the medians are compared. Both clients run in their own process, so neither
shares a GIL with the server.

The figure of merit is nbserve's throughput as a fraction of perf_analyzer's (the goal: at least
0.90 at every point: the generator must not be the bottleneck). Latency percentiles and each
client's CPU (cores, from the process accounting of the reaped client process) are printed beside.
Results go to benchmarks/results/bench_accuracy-<date>.json as well.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import serving  # noqa: E402  (sets BLAS to one thread for this process and the servers it starts)
import _common as common  # noqa: E402

import numpy as np  # noqa: E402

GOAL = 0.90


def measure_perf_analyzer(client: dict[str, Any], address: str, protocol: str, concurrency: int,
                          settings: dict[str, Any]) -> dict[str, Any]:
    row = common.run_perf_analyzer(client["path"], client["env"], model=serving.MODEL, address=address,
                                   protocol=protocol, concurrency=concurrency, interval_ms=settings["interval_ms"],
                                   windows=settings["windows"])
    return {"infer_per_s": row.infer_per_s, "p50_us": row.p50_us, "p99_us": row.p99_us,
            "client_cpu_cores": row.client_cpu_cores, "error": row.error}


def measure_nbserve(address: str, protocol: str, concurrency: int, settings: dict[str, Any]) -> dict[str, Any]:
    from nbserve.bench.run import bench

    cpu_before = common.children_cpu_seconds()
    started = time.perf_counter()
    try:
        run = bench(f"{protocol}://{address}", serving.MODEL, concurrency=[concurrency], warmup_s=0.0,
                    measurement_interval_ms=settings["interval_ms"], stability_windows=settings["windows"],
                    max_windows=settings["windows"], stability_percentage=1e6, live=False)
    except Exception as exc:  # reported in the table; the other points still run
        return {"infer_per_s": None, "p50_us": None, "p99_us": None, "client_cpu_cores": None,
                "error": f"{type(exc).__name__}: {exc}"}
    wall_s = time.perf_counter() - started
    (row,) = run.rows
    return {
        "infer_per_s": row["infer_per_s"], "p50_us": row["p50_ms"] * 1000, "p99_us": row["p99_ms"] * 1000,
        # The generator process was reaped when the run closed it: its CPU is in RUSAGE_CHILDREN.
        "client_cpu_cores": (common.children_cpu_seconds() - cpu_before) / wall_s,
        "error": "; ".join(run.errors) or None,
        "exact_counts": row["total_sent"] == row["server_total_requests"],
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(points: list[dict[str, Any]]) -> str:
    header = (f"{'proto':<5} {'conc':>4} | {'PA infer/s':>10} {'nbs infer/s':>11} {'ratio':>6} | {'PA p50':>7} "
              f"{'nbs p50':>7} | {'PA p99':>7} {'nbs p99':>7} | {'PA cpu':>6} {'nbs cpu':>7} | rounds (nbs/PA)")
    lines = [header, "-" * len(header)]
    for p in points:
        pa, nb = p["perf_analyzer"], p["nbserve"]
        ratio = p["ratio"]
        mark = "" if ratio is None else ("  ok" if ratio >= GOAL else "  LOW")
        rounds = " ".join("-" if r is None else f"{r:.2f}" for r in p["round_ratios"])
        lines.append(
            f"{p['protocol']:<5} {p['concurrency']:>4} | {_fmt(pa['infer_per_s']):>10} {_fmt(nb['infer_per_s']):>11} "
            f"{_fmt(ratio, 2):>6} | {_fmt(pa['p50_us']):>7} {_fmt(nb['p50_us']):>7} | {_fmt(pa['p99_us']):>7} "
            f"{_fmt(nb['p99_us']):>7} | {_fmt(pa['client_cpu_cores'], 2):>6} {_fmt(nb['client_cpu_cores'], 2):>7} | "
            f"{rounds}{mark}"
        )
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer points: about a minute")
    parser.add_argument("--target", choices=["triton", "nbserve"], default="triton",
                        help="the server both clients measure (default: the real tritonserver)")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--concurrency", default=None, help="comma-separated levels (default 1,4,16,64; quick: 1,16)")
    parser.add_argument("--rounds", type=int, default=None, help="back-to-back pairs per point (default 3; quick: 2)")
    parser.add_argument("--blas-threads", default="1", help="read by serving.py at import (see there)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    levels = [int(c) for c in (args.concurrency or ("1,16" if args.quick else "1,4,16,64")).split(",")]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    rounds = args.rounds or (2 if args.quick else 3)
    settings = {"interval_ms": 1000 if args.quick else 2000, "windows": 3}

    from nbserve import _tritonserver
    from nbserve.registry import Registry

    pa_path = _tritonserver.perf_analyzer_path()
    if pa_path is None:
        print(f"perf_analyzer is not available: {_tritonserver.perf_analyzer_unavailable_reason()}")
        return 2
    client = {"path": pa_path, "env": _tritonserver.perf_analyzer_env()}
    weights = common.mlp_weights()
    mlp = common.make_mlp(weights)
    registry = Registry()
    model = registry.register(mlp, name=serving.MODEL, example=np.zeros((2, 64), np.float32), **serving.CONFIG)
    workdir = Path(tempfile.mkdtemp(prefix="nbserve-bench-accuracy-"))
    server: Any = None
    report: dict[str, Any] = {
        "benchmark": "bench_accuracy", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick, "target": args.target, "settings": settings, "rounds": rounds,
        "machine": common.machine(), "model": "MLP 64->256->16 float32, max_batch_size 64, max_queue_delay 100 us",
        "perf_analyzer": f"tritonclient {_tritonserver.PERF_ANALYZER_TRITONCLIENT}", "points": [],
    }
    started = time.perf_counter()
    try:
        if args.target == "triton":
            if not _tritonserver.available():
                print(f"tritonserver is not available: {_tritonserver.unavailable_reason()}")
                return 2
            repository = common.write_triton_mlp(workdir / "repo", model.pbtxt, weights)
            server = _tritonserver.TritonServer(repository).start(timeout_s=90)
        else:
            from nbserve.serving.child import SubprocessServer

            server = SubprocessServer(registry).start(timeout_s=90)
        problem = serving.check_outputs(server.http_address, mlp)
        if problem:
            print(f"the server's outputs are wrong: {problem}")
            return 1
        addresses = {"http": server.http_address, "grpc": server.grpc_address}
        flip = False
        for protocol in protocols:
            for level in levels:
                results: dict[str, list[dict[str, Any]]] = {"perf_analyzer": [], "nbserve": []}
                for _ in range(rounds):
                    order = ["nbserve", "perf_analyzer"] if flip else ["perf_analyzer", "nbserve"]
                    flip = not flip
                    for name in order:
                        if name == "perf_analyzer":
                            result = measure_perf_analyzer(client, addresses[protocol], protocol, level, settings)
                        else:
                            result = measure_nbserve(addresses[protocol], protocol, level, settings)
                        results[name].append(result)
                        print(f"[{time.perf_counter() - started:6.1f} s] {protocol} c={level} {name:<13} "
                              f"{_fmt(result['infer_per_s'])} infer/s, p50 {_fmt(result['p50_us'])} us"
                              + (f"  ERROR {result['error']}" if result.get("error") else ""), flush=True)
                summary = {name: {key: _median([r[key] for r in rs])
                                  for key in ("infer_per_s", "p50_us", "p99_us", "client_cpu_cores")}
                           for name, rs in results.items()}
                round_ratios = [
                    nb["infer_per_s"] / pa["infer_per_s"] if nb["infer_per_s"] and pa["infer_per_s"] else None
                    for pa, nb in zip(results["perf_analyzer"], results["nbserve"])
                ]
                pa_tp, nb_tp = summary["perf_analyzer"]["infer_per_s"], summary["nbserve"]["infer_per_s"]
                report["points"].append({
                    "protocol": protocol, "concurrency": level, **summary,
                    "ratio": nb_tp / pa_tp if nb_tp and pa_tp else None, "round_ratios": round_ratios,
                    "exact_counts": all(r.get("exact_counts", False) for r in results["nbserve"]),
                    "rounds_raw": results,
                })
    finally:
        if server is not None:
            server.stop()
        registry.clear()
        shutil.rmtree(workdir, ignore_errors=True)

    report["machine"]["loadavg_end"] = list(__import__("os").getloadavg())
    report["duration_s"] = round(time.perf_counter() - started, 1)
    print()
    print(f"nbserve.bench vs perf_analyzer on {args.target}, {report['model']}; windows {settings['windows']} x "
          f"{settings['interval_ms']} ms; median of {rounds} back-to-back rounds; latencies in us")
    print(f"machine: {report['machine'].get('cpu', '?')}, {report['machine']['cpus']} CPUs, load "
          f"{report['machine']['loadavg'][0]:.1f} at start / {report['machine']['loadavg_end'][0]:.1f} at end")
    report["table"] = print_table(report["points"])
    ratios = [p["ratio"] for p in report["points"] if p["ratio"] is not None]
    low = [f"{p['protocol']} c={p['concurrency']}" for p in report["points"]
           if p["ratio"] is not None and p["ratio"] < GOAL]
    report["verdict"] = (f"nbserve reaches {min(ratios):.2f}x-{max(ratios):.2f}x of perf_analyzer's throughput"
                         + (f"; below {GOAL:.2f} at {', '.join(low)}" if low else f" (goal {GOAL:.2f}: met everywhere)")
                         if ratios else "no comparable points")
    print(report["verdict"])
    print("request counts equal the server's statistics at every nbserve point: "
          f"{all(p['exact_counts'] for p in report['points'])}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_accuracy-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
