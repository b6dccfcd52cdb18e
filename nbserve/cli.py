"""The ``nbserve`` command: one small function per subcommand.

    nbserve demo [--out PATH] [--frameworks python,torch,onnx,trees]
    nbserve serve REPO [--host H] [--http-port P] [--grpc-port P] [--metrics-port P]

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


if __name__ == "__main__":
    sys.exit(main())
