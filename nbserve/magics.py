"""The IPython extension: ``%load_ext nbserve`` adds a ``%nbserve`` line magic and a
``%%nbserve_model`` cell magic.

    %load_ext nbserve
    %nbserve register scorer booster --max-batch-size 64 --delay-us 100
    server = %nbserve start                 # in this kernel; --subprocess for a child process
    %nbserve bench scorer -c 1,4,16         # live plots while it runs
    %nbserve export model_repository --overwrite

    %%nbserve_model double --example "np.ones((4, 3), 'float32')"
    def double(x):
        return x * 2

Every subcommand is a thin layer over the public API (``nbserve.serve``, ``nbserve.bench``,
``nbserve.export`` ...) and returns its value, so ``run = %nbserve bench scorer`` keeps the run. A
mistake (a misspelt option, an unknown model, no running server) is shown as one ``UsageError`` line
that says how to fix it, never as a traceback: IPython prints UsageError that way, and the cell still
counts as failed, so "run all" stops there. ``%nbserve SUBCOMMAND -h`` prints the subcommand's help;
model names complete with Tab after ``bench``, ``sweep``, ``register`` and ``--models``.

Nothing here imports a framework or the server until a subcommand needs it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

__all__ = ["NbserveMagics", "ServerStatus", "load_ipython_extension", "unload_ipython_extension", "complete"]


# ----------------------------------------------------------------------------- argument parsing
class _HelpShown(Exception):
    """argparse printed the help (``-h``): the magic ends quietly."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting the kernel, with errors that name the fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}. Fix: see {self.prog} -h")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            print(message, end="")
        raise _HelpShown


def _numbers(kind: type, example: str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers like {example}, got {text!r}")
        return values

    parse.__name__ = "numbers"  # argparse names the type in its messages
    return parse


_ints = _numbers(int, "1,4,16")
_floats = _numbers(float, "100,500")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _add_register_options(parser: argparse.ArgumentParser) -> None:
    """The options ``register`` and ``%%nbserve_model`` share (nbserve.register's keywords)."""
    parser.add_argument("--example", metavar="EXPR",
                        help="a batch of inputs (a Python expression): the signature is inferred from it")
    parser.add_argument("--max-batch-size", type=int, metavar="N", help="Triton's max_batch_size (0: no batching)")
    parser.add_argument("--delay-us", type=int, metavar="US",
                        help="dynamic batching: max_queue_delay_microseconds")
    parser.add_argument("--preferred-batch-size", type=_ints, metavar="N,N",
                        help="dynamic batching: preferred_batch_size, e.g. 16,32")
    parser.add_argument("--instances", type=int, metavar="N", help="instance_group count: models run in parallel")
    parser.add_argument("--inputs", type=_names, metavar="A,B", help="input tensor names")
    parser.add_argument("--outputs", type=_names, metavar="A,B", help="output tensor names")
    parser.add_argument("--framework", metavar="NAME",
                        help="force a backend: python, torch, onnx, trees, transformers, tensorrt")
    parser.add_argument("--version", type=int, metavar="N", help="the version number (default: the next one)")
    parser.add_argument("--per-item", action="store_true",
                        help="a Python function that takes one item, not a batch (batched=False)")
    parser.add_argument("--options", metavar="EXPR",
                        help="a dict of further nbserve.register options (a Python expression)")


def build_parser() -> _Parser:
    """The ``%nbserve`` parser: one subparser per subcommand."""
    parser = _Parser(prog="%nbserve", description="Register, serve, benchmark and export models from this notebook. "
                     "Every subcommand returns its value: `server = %nbserve start`.")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)

    p = sub.add_parser("start", help="serve the registered models (in this kernel, or --subprocess)",
                       description="Serve every registered model over KServe v2 HTTP and gRPC with Triton's "
                       "dynamic batching; replaces a server started before. Returns the server.")
    p.add_argument("--subprocess", action="store_true",
                   help="serve a snapshot of the registry from a child process instead of this kernel")
    p.add_argument("--host", default="127.0.0.1", help="the interface to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=0, metavar="P", help="0 (default) picks a free port")
    p.add_argument("--grpc-port", type=int, default=0, metavar="P", help="0 (default) picks a free port")
    p.add_argument("--metrics-port", type=int, default=0, metavar="P", help="0 (default) picks a free port")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on requests")
    p.add_argument("--no-grpc", action="store_true", help="no gRPC endpoint (in-kernel mode)")
    p.add_argument("--no-metrics", action="store_true", help="no Prometheus endpoint (in-kernel mode)")

    sub.add_parser("stop", help="stop the server (finishes in-flight requests)",
                   description="Stop the server that %nbserve start (or nbserve.serve) started. "
                   "Does nothing when none is running.")
    sub.add_parser("status", help="the server's addresses, models and request counts",
                   description="Show the running server: mode, addresses, uptime, and per model its "
                   "version, requests, failures and queue depth.")
    sub.add_parser("models", help="the registered models and their signatures",
                   description="The table of registered models (nbserve.models()).")

    p = sub.add_parser("register", help="register a model held in a notebook variable",
                       description="Register the object in VARIABLE (a Python expression: a function, torch "
                       "module, ONNX model, tree model, ...) as model NAME; re-registering adds a version.")
    p.add_argument("name", metavar="NAME", help="the model name")
    p.add_argument("variable", metavar="VARIABLE", help="the object to register (a Python expression)")
    _add_register_options(p)

    p = sub.add_parser("bench", help="benchmark a model on the running server, with live plots",
                       description="Closed-loop load at each concurrency (or open-loop at each request rate), "
                       "measured in windows until stable as perf_analyzer does; live plots while it runs. "
                       "Returns the run: its .results table has one row per level.")
    p.add_argument("model", metavar="MODEL", help="the model name")
    p.add_argument("-c", "--concurrency", type=_ints, default=[1, 4, 16], metavar="N,N",
                   help="closed-loop levels (default 1,4,16)")
    p.add_argument("--request-rate", type=_floats, metavar="R,R", help="open-loop levels in requests/s instead")
    p.add_argument("-i", "--protocol", choices=["inprocess", "http", "grpc"],
                   help="how requests travel (default: in-process for an in-kernel server, else http)")
    p.add_argument("-b", "--batch-size", type=int, default=1, metavar="N", help="rows per request")
    p.add_argument("-p", "--measurement-interval", type=float, default=1000.0, metavar="MS",
                   help="window length in ms (default 1000)")
    p.add_argument("--warmup", type=float, default=0.5, metavar="S", help="seconds of load before measuring")
    p.add_argument("-r", "--max-windows", type=int, default=10, metavar="N", help="most windows per level")
    p.add_argument("--url", help="benchmark this server instead (http://host:port or grpc://host:port)")
    p.add_argument("--no-live", action="store_true", help="no live plot")
    p.add_argument("-f", "--out", metavar="PATH", help="also save the results (.csv or .json)")

    p = sub.add_parser("sweep", help="benchmark combinations of batching configs and recommend one",
                       description="Measure the model under every combination of the given config values "
                       "(each on a fresh server) and recommend the most throughput within the latency budget.")
    p.add_argument("model", metavar="MODEL", help="the model name")
    p.add_argument("--max-batch-size", type=_ints, metavar="N,N", help="values of max_batch_size to try")
    p.add_argument("--delay-us", type=_ints, metavar="US,US", help="values of max_queue_delay_microseconds")
    p.add_argument("--instances", type=_ints, metavar="N,N", help="instance counts to try")
    p.add_argument("-c", "--concurrency", type=_ints, default=[1, 4, 16], metavar="N,N",
                   help="levels each config is measured at (default 1,4,16)")
    p.add_argument("--budget-ms", type=float, metavar="MS", help="latency budget for the recommendation")
    p.add_argument("--latency", default="p99_ms", help="the latency column judged (default p99_ms)")
    p.add_argument("-i", "--protocol", choices=["inprocess", "http", "grpc"], default="inprocess")
    p.add_argument("-p", "--measurement-interval", type=float, default=1000.0, metavar="MS")
    p.add_argument("--warmup", type=float, default=0.5, metavar="S")
    p.add_argument("--apply", action="store_true", help="give the registered model the recommended config")
    p.add_argument("--no-live", action="store_true", help="no live plot")

    p = sub.add_parser("export", help="write the production Triton repository",
                       description="Write the registered models (and ensembles) as a Triton model repository "
                       "with a README, kserve.yaml and requirements; validated before it is moved into place.")
    p.add_argument("path", metavar="PATH", help="the repository folder")
    p.add_argument("--models", type=_names, metavar="A,B", help="only these models (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder nbserve did not write")
    p.add_argument("--portable", action="store_true", help="ONNX, TorchScript and trees as Python-backend models")
    p.add_argument("--storage-uri", metavar="URI", help="where the repository will live, for kserve.yaml")

    p = sub.add_parser("validate", help="lint a Triton repository: file, line, field and fix per problem",
                       description="Check every model folder of a Triton repository as Triton would load it.")
    p.add_argument("path", metavar="PATH", help="the repository folder")

    p = sub.add_parser("parity", help="compare a repository served by nbserve and a real Triton with the kernel",
                       description="Send the same requests to the kernel's models, the repository in an nbserve "
                       "subprocess and (where it runs) a real tritonserver; show the differences and latencies.")
    p.add_argument("path", metavar="PATH", help="the exported repository")
    triton = p.add_mutually_exclusive_group()
    triton.add_argument("--no-triton", action="store_true", help="compare with the nbserve subprocess only")
    triton.add_argument("--triton", action="store_true", help="require the real tritonserver")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--repeats", type=int, default=3, help="passes over the samples for latencies")

    p = sub.add_parser("help", help="help on a subcommand", description="Help on %nbserve or one subcommand.")
    p.add_argument("topic", nargs="?", metavar="SUBCOMMAND")
    return parser


def build_cell_parser() -> _Parser:
    """The ``%%nbserve_model`` parser."""
    parser = _Parser(prog="%%nbserve_model",
                     description="Run the cell, then register the function it defines as model NAME: the "
                     "function named --function, else the one called NAME, else the last one defined.")
    parser.add_argument("name", metavar="NAME", help="the model name")
    parser.add_argument("--function", metavar="F", help="the name (in the cell) of the object to register")
    _add_register_options(parser)
    return parser


SUBCOMMANDS = ("start", "stop", "status", "models", "register", "bench", "sweep", "export", "validate", "parity",
               "help")
_MODEL_ARGUMENT = {"bench", "sweep", "register"}  # subcommands whose first argument is a model name


# ----------------------------------------------------------------------------- the magics
@magics_class
class NbserveMagics(Magics):
    """``%nbserve`` and ``%%nbserve_model``; see the module docstring."""

    @line_magic("nbserve")
    def nbserve(self, line: str = "") -> Any:
        """Register, serve, benchmark and export models from this notebook.

        %nbserve start [--subprocess] [--http-port P]   serve the registered models
        %nbserve stop | status | models
        %nbserve register NAME VARIABLE [options]       register a notebook object
        %nbserve bench MODEL [-c 1,4,16]                benchmark with live plots
        %nbserve sweep MODEL --max-batch-size 8,32 --delay-us 0,500 [--budget-ms 5] [--apply]
        %nbserve export PATH | validate PATH | parity PATH

        %nbserve SUBCOMMAND -h shows the options of a subcommand.
        """
        words = _split(line, "%nbserve")
        if not words or words[0] in ("-h", "--help"):
            build_parser().print_help()
            return None
        if words[0] not in SUBCOMMANDS:
            raise UsageError(_unknown_subcommand(words[0]))
        try:
            args = build_parser().parse_args(words)
        except _HelpShown:
            return None
        if args.command == "help":
            return self._help(args.topic)
        try:
            return getattr(self, f"_{args.command}")(args)
        except _nbserve_errors() as exc:
            raise UsageError(f"%nbserve {args.command}: {exc}") from None

    @cell_magic("nbserve_model")
    def nbserve_model(self, line: str = "", cell: str = "") -> Any:
        """Run the cell and register the function it defines.

        %%nbserve_model NAME [--function F] [--example EXPR] [--max-batch-size N] [--delay-us US] ...
        def NAME(x):
            return x * 2

        The registered object is the one named --function, else the one called NAME, else the last
        function the cell defines. %%nbserve_model -h lists the options.
        """
        try:
            args = build_cell_parser().parse_args(_split(line, "%%nbserve_model"))
        except _HelpShown:
            return None
        defined = _defined_functions(self.shell.transform_cell(cell))
        result = self.shell.run_cell(cell, store_history=False)
        if not result.success:
            raise UsageError(f"%%nbserve_model {args.name}: the cell raised an error (shown above), so nothing was "
                             "registered. Fix: correct the cell and run it again")
        target = args.function or (args.name if args.name in defined else (defined[-1] if defined else None))
        if target is None:
            raise UsageError(f"%%nbserve_model {args.name}: the cell defines no function to register. Fix: define "
                             f"one with def, or name an object with --function")
        if target not in self.shell.user_ns:
            raise UsageError(f"%%nbserve_model {args.name}: the cell defines no {target!r}. Fix: "
                             f"--function takes a name the cell assigns; it defines {', '.join(defined) or 'no function'}")
        try:
            return self._register_object(args.name, self.shell.user_ns[target], args, "%%nbserve_model")
        except _nbserve_errors() as exc:
            raise UsageError(f"%%nbserve_model {args.name}: {exc}") from None

    # --------------------------------------------------------------------- subcommands
    def _help(self, topic: str | None) -> None:
        if topic is None:
            build_parser().print_help()
        elif topic not in SUBCOMMANDS:
            raise UsageError(_unknown_subcommand(topic))
        else:
            try:
                build_parser().parse_args([topic, "-h"])
            except _HelpShown:
                pass
        return None

    def _start(self, args: argparse.Namespace) -> Any:
        import nbserve

        options: dict[str, Any] = dict(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                                       metrics_port=args.metrics_port, token=args.token)
        if args.subprocess:
            if args.no_grpc or args.no_metrics:
                raise UsageError("%nbserve start: --no-grpc and --no-metrics apply to the in-kernel server only. "
                                 "Fix: drop them, or drop --subprocess")
            return nbserve.serve(mode="subprocess", **options)
        return nbserve.serve(grpc=not args.no_grpc, metrics=not args.no_metrics, **options)

    def _stop(self, args: argparse.Namespace) -> None:
        server = _current_server()
        if server is None or not server.is_running:
            print("nbserve: no server is running")
            return
        where = server.http_address if server.http_port else f"{server.mode} mode"
        server.stop()
        print(f"nbserve: stopped the {server.mode} server at {where}")

    def _status(self, args: argparse.Namespace) -> Any:
        server = _current_server()
        if server is None or not server.is_running:
            print("nbserve: no server is running; start one with %nbserve start")
            return None
        return ServerStatus.of(server)

    def _models(self, args: argparse.Namespace) -> Any:
        import nbserve

        return nbserve.models()

    def _register(self, args: argparse.Namespace) -> Any:
        obj = self._evaluate(args.variable, "%nbserve register", "VARIABLE")
        return self._register_object(args.name, obj, args, "%nbserve register")

    def _bench(self, args: argparse.Namespace) -> Any:
        import nbserve

        target: Any = args.url or _running_server("%nbserve bench", "or pass --url of another server")
        _check_model(args.model, "%nbserve bench", server=None if args.url else target)
        run = nbserve.bench(target, args.model, args.concurrency, request_rate=args.request_rate,
                            protocol=args.protocol, batch_size=args.batch_size,
                            measurement_interval_ms=args.measurement_interval, warmup_s=args.warmup,
                            max_windows=args.max_windows, stability_windows=min(3, args.max_windows),
                            live=not args.no_live)
        if args.out:
            print(f"nbserve: results saved to {run.save(args.out)}")
        return run

    def _sweep(self, args: argparse.Namespace) -> Any:
        import nbserve

        _check_model(args.model, "%nbserve sweep")
        result = nbserve.sweep(args.model, max_batch_size=args.max_batch_size,
                               max_queue_delay_microseconds=args.delay_us, instances=args.instances,
                               concurrency=args.concurrency, latency_budget_ms=args.budget_ms, latency=args.latency,
                               protocol=args.protocol, live=not args.no_live,
                               measurement_interval_ms=args.measurement_interval, warmup_s=args.warmup)
        print(result.recommendation())
        if args.apply and result.best is not None:
            model = result.apply()
            print(f"nbserve: applied to {args.model!r} v{model.version}: {result.best['config']}")
        return result

    def _export(self, args: argparse.Namespace) -> Any:
        import nbserve

        return nbserve.export(args.path, args.models, overwrite=args.overwrite, portable=args.portable,
                              storage_uri=args.storage_uri)

    def _validate(self, args: argparse.Namespace) -> Any:
        import nbserve

        return nbserve.validate(args.path)

    def _parity(self, args: argparse.Namespace) -> Any:
        import nbserve

        triton = True if args.triton else (False if args.no_triton else None)
        return nbserve.parity(args.path, triton=triton, rtol=args.rtol, atol=args.atol, repeats=args.repeats)

    # --------------------------------------------------------------------- helpers
    def _evaluate(self, expression: str, prog: str, what: str) -> Any:
        """A Python expression in the notebook's namespace; a NameError becomes one line with the fix."""
        try:
            return self.shell.ev(expression)
        except NameError as exc:
            name = getattr(exc, "name", None) or expression
            close = difflib.get_close_matches(name, [k for k in self.shell.user_ns if not k.startswith("_")], n=1)
            hint = f"did you mean {close[0]!r}?" if close else "define it in a cell above and run that cell"
            raise UsageError(f"{prog}: {what} {expression!r}: there is no variable {name!r} in this notebook. "
                             f"Fix: {hint}") from None
        except SyntaxError as exc:
            raise UsageError(f"{prog}: {what} {expression!r} is not a Python expression ({exc.msg}). Fix: quote "
                             "it as one shell word, e.g. --example \"np.ones((4, 3), 'float32')\"") from None
        except Exception as exc:
            raise UsageError(f"{prog}: {what} {expression!r} raised {type(exc).__name__}: {exc}") from None

    def _register_object(self, name: str, obj: Any, args: argparse.Namespace, prog: str) -> Any:
        import nbserve

        options: dict[str, Any] = {}
        if args.options:
            options = self._evaluate(args.options, prog, "--options")
            if not isinstance(options, dict):
                raise UsageError(f"{prog}: --options must be a dict, got {type(options).__name__}. "
                                 "Fix: --options \"{'instances': 2}\"")
            options = dict(options)
        if args.max_batch_size is not None:
            options["max_batch_size"] = args.max_batch_size
        batching = dict(options.pop("dynamic_batching", None) or {})
        if args.delay_us is not None:
            batching["max_queue_delay_microseconds"] = args.delay_us
        if args.preferred_batch_size is not None:
            batching["preferred_batch_size"] = args.preferred_batch_size
        if batching:
            options["dynamic_batching"] = batching
        if args.instances is not None:
            options["instances"] = args.instances
        if args.framework is not None:
            options["framework"] = args.framework
        if args.per_item:
            options["batched"] = False
        example = self._evaluate(args.example, prog, "--example") if args.example else None
        return nbserve.register(obj, name=name, version=args.version, inputs=args.inputs, outputs=args.outputs,
                                example=example, **options)


# ----------------------------------------------------------------------------- status display
@dataclasses.dataclass
class ServerStatus:
    """What ``%nbserve status`` shows: mode, addresses, uptime and per model its counts."""

    mode: str
    addresses: dict[str, str]
    uptime_s: float | None
    models: list[dict[str, Any]]  # model, version, requests, failures, queue (None: not known)

    @classmethod
    def of(cls, server: Any) -> ServerStatus:
        status = server.status()
        addresses = {k: status[k] for k in ("http", "grpc", "metrics") if status.get(k)}
        if "pid" in status:
            addresses["pid"] = str(status["pid"])
        models = status.get("models")
        if models is None:  # a child process: ask it, as any client would
            models = _served_statistics(server)
        return cls(status["mode"], addresses, status.get("uptime_s"), list(models))

    def _rows(self) -> list[list[str]]:
        return [[m["model"], str(m["version"]), str(m["requests"]), str(m["failures"]),
                 "-" if m.get("queue") is None else str(m["queue"])] for m in self.models]

    def __repr__(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in self.addresses.items())
        head = f"nbserve server running ({self.mode}): {where}"
        if self.uptime_s is not None:
            head += f", up {self.uptime_s:.0f} s"
        rows = [["model", "version", "requests", "failures", "queued"], *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([head, *lines])

    def _repr_html_(self) -> str:
        import html

        where = " · ".join(f"{k}: <code>{html.escape(v)}</code>" for k, v in self.addresses.items())
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self._rows())
        return (f"<div class='nbserve-status'><b>nbserve server</b> running ({self.mode}) {where}<table><thead><tr>"
                "<th>model</th><th>version</th><th>requests</th><th>failures</th><th>queued</th></tr></thead>"
                f"<tbody>{body}</tbody></table></div>")


def _served_statistics(server: Any) -> list[dict[str, Any]]:
    """Per model version request counts from the server's statistics endpoint (Triton's JSON)."""
    try:
        stats = server.client("http").get_inference_statistics()
    except Exception:  # the table is a courtesy: an unreachable endpoint leaves it empty
        return []
    return [{"model": s["name"], "version": s["version"],
             "requests": s.get("inference_stats", {}).get("success", {}).get("count", 0),
             "failures": s.get("inference_stats", {}).get("fail", {}).get("count", 0), "queue": None}
            for s in stats.get("model_stats", [])]


# ----------------------------------------------------------------------------- small helpers
def _nbserve_errors() -> type[Exception]:
    from .errors import NbserveError

    return NbserveError


def _split(line: str, prog: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:  # an unbalanced quote
        raise UsageError(f"{prog}: cannot split the line into words ({exc}). Fix: close every quote") from None


def _unknown_subcommand(word: str) -> str:
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1)
    hint = f"did you mean %nbserve {close[0]}?" if close else "%nbserve -h lists them"
    return f"%nbserve: unknown subcommand {word!r} (one of {', '.join(SUBCOMMANDS)}). Fix: {hint}"


def _current_server() -> Any:
    from .serving.server import current_server

    return current_server()


def _running_server(prog: str, alternative: str = "") -> Any:
    server = _current_server()
    if server is None or not server.is_running:
        raise UsageError(f"{prog}: no server is running. Fix: start one with %nbserve start"
                         + (f" ({alternative})" if alternative else ""))
    return server


def _check_model(name: str, prog: str, server: Any = None) -> None:
    """Fail early, in one line, on a model the registry (or the running server) does not know."""
    from .registry import default_registry

    known = list(default_registry.names())
    if server is not None and server.registry is not default_registry:
        known = list(server.registry.names())
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=1)
    hint = (f"did you mean {close[0]!r}?" if close else
            f"the models are {', '.join(known)}" if known else "register one first (%nbserve register NAME VARIABLE)")
    raise UsageError(f"{prog}: no model {name!r} is registered. Fix: {hint}")


def _defined_functions(source: str) -> list[str]:
    """Names the cell binds at top level to a ``def`` (or ``async def``), in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []  # run_cell reports it
    return [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


# ----------------------------------------------------------------------------- tab completion
_MAGIC_LINE = re.compile(r"^\s*(?:[\w.]+\s*=\s*)?(%%?nbserve(?:_model)?)\b(.*)$")


def complete(text_until_cursor: str, user_names: Iterable[str] = ()) -> list[str] | None:
    """Completions of the word being typed on a ``%nbserve`` / ``%%nbserve_model`` line (in a comma
    list, of its last item: IPython completes the text after the last delimiter), or None when this
    is not such a line or another completer should answer (file paths, expressions).

    >>> complete("%nbserve be")
    ['bench']
    """
    match = _MAGIC_LINE.match(text_until_cursor)
    if not match:
        return None
    magic, rest = match.groups()
    if magic == "%nbserve_model":  # %nbserve_model is not a line magic
        return None
    words = rest.split()
    current = "" if not rest or rest[-1].isspace() else words.pop()
    if magic == "%%nbserve_model":
        parser = build_cell_parser()
        if current.startswith("-"):
            return _options(parser, current)
        return _models(current) if not _after_option(parser, words) and not _positionals(parser, words) else None
    if not words:
        return [s for s in SUBCOMMANDS if s.startswith(current)]
    command, positional = words[0], words[1:]
    if command not in SUBCOMMANDS or command == "help":
        return [s for s in SUBCOMMANDS if s.startswith(current)] if command == "help" and len(words) == 1 else None
    parser = _subparser(command)
    if current.startswith("-"):
        return _options(parser, current)
    if positional and positional[-1] == "--models":  # a comma list: complete its last name
        return _models(current.rpartition(",")[2])
    if _after_option(parser, positional):
        return None
    count = _positionals(parser, positional)
    if command in _MODEL_ARGUMENT and count == 0:
        return _models(current)
    if command == "register" and count == 1:
        return sorted(n for n in user_names if n.startswith(current) and not n.startswith("_"))
    return None


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def _options(parser: argparse.ArgumentParser, current: str) -> list[str]:
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith(current) and o.startswith("--"))


def _takes_value(parser: argparse.ArgumentParser, option: str) -> bool:
    for action in parser._actions:
        if option in action.option_strings:
            return action.nargs != 0
    return False


def _after_option(parser: argparse.ArgumentParser, words: Sequence[str]) -> bool:
    """True when the word being typed is the value of the option before it (not a positional)."""
    return bool(words) and words[-1].startswith("-") and _takes_value(parser, words[-1])


def _positionals(parser: argparse.ArgumentParser, words: Sequence[str]) -> int:
    """How many positional arguments ``words`` already holds (option values are skipped)."""
    count, skip = 0, False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = _takes_value(parser, word)
        else:
            count += 1
    return count


def _models(prefix: str) -> list[str]:
    from .registry import default_registry

    return sorted(n for n in default_registry.names() if n.startswith(prefix))


def _matcher(ipython: Any) -> Any:
    """An IPython (>= 8.6) completion matcher for the magics' lines."""
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher()
    def nbserve_matcher(context: Any) -> dict[str, Any]:
        try:
            found = complete(context.text_until_cursor, ipython.user_ns)
        except Exception:  # completion must never break typing
            found = None
        if not found:
            return {"completions": [], "suppress": False}
        return {"completions": [SimpleCompletion(text=c, type="nbserve") for c in found], "suppress": True}

    nbserve_matcher._nbserve = True
    return nbserve_matcher


# ----------------------------------------------------------------------------- load / unload
def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbserve``: add the magics and the completer (idempotent)."""
    unload_ipython_extension(ipython)
    ipython.register_magics(NbserveMagics)
    completer = getattr(ipython, "Completer", None)
    if completer is not None and hasattr(completer, "custom_matchers"):
        try:
            completer.custom_matchers.insert(0, _matcher(ipython))
        except ImportError:  # IPython < 8.6: magics work, model names do not complete
            pass


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbserve``: remove the magics and the completer. A running server keeps running
    (it belongs to the notebook, not to the magics); stop it first with ``%nbserve stop``."""
    magics = ipython.magics_manager.magics
    for kind, name in (("line", "nbserve"), ("cell", "nbserve_model")):
        magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop(NbserveMagics.__name__, None)
    completer = getattr(ipython, "Completer", None)
    if completer is not None and hasattr(completer, "custom_matchers"):
        completer.custom_matchers[:] = [m for m in completer.custom_matchers if not getattr(m, "_nbserve", False)]
