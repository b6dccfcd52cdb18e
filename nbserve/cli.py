"""The ``nbserve`` command: one small function per subcommand.

    nbserve demo [--out PATH] [--frameworks python,torch,onnx,trees]
    nbserve serve REPO [--host H] [--http-port P] [--grpc-port P] [--metrics-port P]
    nbserve export OUT (--script FILE.py | --from REPO) [--models A,B] [--portable] [--overwrite]
    nbserve validate REPO [--strict]
    nbserve parity REPO [--samples FILE] [--no-triton] [--rtol R] [--atol A]
    nbserve bench URL MODEL [-c 1,4,16 | --request-rate 100,500] [-i http|grpc] [-f results.csv]

Each subcommand has an ``_add_<name>(subparsers)`` that declares its arguments and a ``_<name>(args)``
that runs it and returns the exit status. nbserve errors are printed as one line (they name the fix),
not as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbserve",
        description="Serve models from a Jupyter notebook with Triton's config, batching and wire protocol.",
    )
    parser.add_argument("--version", action="version", version=f"nbserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(subparsers)
    _add_serve(subparsers)
    _add_export(subparsers)
    _add_validate(subparsers)
    _add_parity(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nbserve`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import NbserveError

    try:
        return args.run(args)
    except NbserveError as exc:
        print(f"nbserve {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ----------------------------------------------------------------------------- demo
def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the quickstart, headless: register tiny models, serve, infer, benchmark, export, validate",
        description="The quickstart notebook without a notebook: register a tiny model per installed framework, "
        "print the models and a config.pbtxt, serve them in this process, send a sample with tritonclient, "
        "benchmark one over HTTP, export the production Triton repository and validate it, then read it back "
        "and check that every model answers like the live object.",
    )
    parser.add_argument("--out", metavar="PATH",
                        help="export the repository here and keep it (default: a temporary directory)")
    parser.add_argument("--frameworks", metavar="NAMES", default=None,
                        help="comma-separated subset of python,torch,onnx,trees (default: all that are installed)")
    parser.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    frameworks = [n.strip() for n in args.frameworks.split(",") if n.strip()] if args.frameworks else None
    return run(args.out, frameworks=frameworks)


# ----------------------------------------------------------------------------- serve
def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    from .serving.child import build_parser

    parser = subparsers.add_parser(
        "serve",
        help="serve a Triton model repository (ours or hand-written) over KServe v2 HTTP and gRPC",
        description="Serve a Triton model repository with nbserve's server: Triton's dynamic batching, "
        "KServe v2 over HTTP and gRPC, Prometheus metrics. Stops on SIGTERM/Ctrl-C after draining.",
    )
    build_parser(parser)
    parser.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from .serving.child import run

    return run(args)


# ----------------------------------------------------------------------------- export
def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a production Triton repository (README, kserve.yaml, requirements) from a script or a repository",
        description="Run a Python script that registers models (nbserve.register) and export them, or export "
        "an existing Triton repository (e.g. --portable to wrap native models for the Python backend). "
        "The repository is built aside and renamed into place, and validated before.",
    )
    parser.add_argument("out", help="the repository folder to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--script", metavar="FILE.py", help="a Python script that registers the models to export")
    source.add_argument("--from", dest="source", metavar="REPO", help="an existing Triton repository to export")
    parser.add_argument("--models", metavar="NAMES", help="comma-separated model names (default: all)")
    parser.add_argument("--portable", action="store_true",
                        help="write ONNX, TorchScript and tree models as Python-backend models")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder nbserve did not write")
    parser.add_argument("--storage-uri", metavar="URI", help="where the repository will live, for kserve.yaml")
    parser.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from .export.exporter import export

    models = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    if args.script:
        import runpy

        runpy.run_path(args.script, run_name="__main__")
    report = export(args.out, models, overwrite=args.overwrite, portable=args.portable, source=args.source,
                    storage_uri=args.storage_uri, progress=True)
    print(repr(report))
    return 0


# ----------------------------------------------------------------------------- validate
def _add_validate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="lint a Triton model repository (ours or hand-written): file, line, field and fix for each problem",
        description="Check every model folder of a Triton repository: config.pbtxt parsing, names, dims and "
        "batching, version folders, model files, ensemble wiring, PyTorch naming, FIL parameters. Exits 1 when "
        "Triton would refuse a model.",
    )
    parser.add_argument("repository", help="the Triton model repository")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.set_defaults(run=_validate)


def _validate(args: argparse.Namespace) -> int:
    from .export.validate import validate

    report = validate(args.repository)
    print(str(report))
    return 1 if report.errors or (args.strict and report.warnings) else 0


# ----------------------------------------------------------------------------- parity
def _add_parity(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "parity",
        help="serve a repository in nbserve and in a real tritonserver and compare their answers",
        description="Read the repository into this process (the reference), serve it with nbserve in a "
        "subprocess and, where it can run, with a real tritonserver; send the same requests and print the "
        "largest differences and the latencies. Exits 1 when an output differs beyond the tolerance.",
    )
    parser.add_argument("repository", help="the Triton model repository")
    parser.add_argument("--samples", metavar="FILE",
                        help="requests as .npz (keys MODEL/INPUT) or .json ({model: {input: values}}); "
                        "default: a random request per model from its config")
    parser.add_argument("--no-triton", action="store_true", help="compare with the nbserve subprocess only")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the samples for latencies")
    parser.set_defaults(run=_parity)


def _parity(args: argparse.Namespace) -> int:
    from .export.parity import load_samples, parity
    from .registry import Registry

    samples = load_samples(args.samples, args.repository) if args.samples else None
    report = parity(args.repository, samples, registry=Registry(), triton=False if args.no_triton else None,
                    rtol=args.rtol, atol=args.atol, repeats=args.repeats)
    print(repr(report))
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- bench
def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure a model on any KServe v2 server (nbserve, Triton) and print a perf_analyzer-like table",
        description="Closed-loop load at each concurrency (or open-loop at each request rate) from a separate "
        "process, measured in windows until throughput and latency are stable, as perf_analyzer does; prints "
        "client throughput and latency percentiles with the server's queue and compute times and batch sizes.",
    )
    parser.add_argument("url", help='the server: "http://127.0.0.1:8000", "grpc://127.0.0.1:8001" or "host:port"')
    parser.add_argument("model", help="the model name")
    parser.add_argument("-c", "--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--request-rate", metavar="RATES",
                        help="comma-separated request rates (requests/s): open loop instead of concurrency")
    parser.add_argument("--distribution", choices=["constant", "poisson"], default="constant",
                        help="arrivals of the open loop")
    parser.add_argument("-i", "--protocol", choices=["http", "grpc"], default=None,
                        help="default: the URL's scheme, else http")
    parser.add_argument("-x", "--model-version", default="", help="a model version (default: the server's)")
    parser.add_argument("-b", "--batch-size", type=int, default=1)
    parser.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2",
                        help="dims of an input with variable dims (repeatable)")
    parser.add_argument("--input-data", metavar="FILE.json",
                        help="inputs as JSON: {input: values} or a list of them (default: random data)")
    parser.add_argument("-p", "--measurement-interval", type=float, default=1000.0, metavar="MS")
    parser.add_argument("-s", "--stability-percentage", type=float, default=10.0)
    parser.add_argument("-r", "--max-trials", type=int, default=10, help="most windows per level")
    parser.add_argument("--warmup", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument("--processes", type=int, default=None,
                        help="load generator processes (default: 1; gRPC above concurrency 8: one per 8, up to 4)")
    parser.add_argument("--token", default=None, help="bearer token")
    parser.add_argument("-f", "--out", metavar="PATH", help="also write the results (.csv or .json)")
    parser.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    import json

    from .bench.run import bench
    from .errors import InvalidInput

    def numbers(text: str, kind: type) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise InvalidInput(f"not a comma-separated list of numbers: {text!r}", hint="e.g. -c 1,4,16") from None

    shapes = {}
    for item in args.shape:
        name, _, dims = item.partition(":")
        shapes[name] = numbers(dims, int)
    inputs = json.loads(open(args.input_data).read()) if args.input_data else None
    run = bench(
        args.url, args.model, numbers(args.concurrency, int),
        request_rate=numbers(args.request_rate, float) if args.request_rate else None,
        distribution=args.distribution, protocol=args.protocol, version=args.model_version or None,
        inputs=inputs, batch_size=args.batch_size, shapes=shapes or None,
        measurement_interval_ms=args.measurement_interval, stability_percentage=args.stability_percentage,
        max_windows=args.max_trials, stability_windows=min(3, args.max_trials), warmup_s=args.warmup,
        processes=args.processes, token=args.token, live=False,
    )
    print(f"*** nbserve bench: {args.model} at {run.settings['target']}, batch size {args.batch_size}, "
          f"windows of {args.measurement_interval:g} ms, stable within {args.stability_percentage:g}% ***")
    print(run.table())
    for message, count in run.errors.items():
        print(f"error x{count}: {message}")
    if args.out:
        print(f"results: {run.save(args.out)}")
    return 1 if run.errors and not any(r["requests"] for r in run.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
