"""The ``nbserve`` command: one small function per subcommand.

    nbserve demo [--out PATH] [--frameworks python,torch,onnx,trees]
    nbserve serve REPO [--host H] [--http-port P] [--grpc-port P] [--metrics-port P]
    nbserve export OUT (--script FILE.py | --from REPO) [--models A,B] [--portable] [--overwrite]
    nbserve validate REPO [--strict]
    nbserve parity REPO [--samples FILE] [--no-triton] [--rtol R] [--atol A]

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
        help="register tiny models of each installed framework, write and read a Triton repository",
        description="Register a tiny model per installed framework, print the models and their "
        "config.pbtxt, write them as a Triton model repository, read it back and check that every "
        "read-back model gives the live object's outputs.",
    )
    parser.add_argument("--out", metavar="PATH",
                        help="write the repository here and keep it (default: a temporary directory)")
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


if __name__ == "__main__":
    sys.exit(main())
