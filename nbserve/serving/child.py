"""Subprocess mode: serve a Triton repository in a child process.

The parent snapshots the registry with the repository writer, starts ``nbserve serve REPO`` (this
module's :func:`main`) and waits for the child's ready line on stdout. A reader thread forwards the
child's log to the ``nbserve.subprocess`` logger and keeps its last lines, so a crash is reported with
them. On Linux the child gets SIGTERM when the kernel that started it dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ServerStateError
from ..registry import Registry, default_registry
from .server import DEFAULT_MAX_BODY_BYTES, Server, _Addresses

__all__ = ["SubprocessServer", "main"]

READY_PREFIX = "NBSERVE_READY "
TOKEN_ENV = "NBSERVE_TOKEN"  # the token travels in the environment, never on the command line
_log = logging.getLogger("nbserve.subprocess")


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM it when the parent dies."""
    with contextlib.suppress(Exception):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class SubprocessServer(_Addresses):
    """A child process serving a snapshot of the registry; same addresses and API as :class:`Server`."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        repository: str | Path | None = None,
        log_lines: int = 200,
    ) -> None:
        self.registry = registry if registry is not None else default_registry
        self.host = host
        self._ports = (http_port, grpc_port, metrics_port)
        self.http_port = self.grpc_port = self.metrics_port = None
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.mode = "subprocess"
        self._given_repository = Path(repository) if repository is not None else None
        self._snapshot_dir: Path | None = None
        self.repository: Path | None = None
        self.process: subprocess.Popen[str] | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.ready_s: float | None = None
        self._client: Any = None

    # --------------------------------------------------------------------- lifecycle
    def start(self, timeout_s: float = 30.0) -> SubprocessServer:
        started = time.perf_counter()
        if self._given_repository is not None:
            self.repository = self._given_repository
        else:
            from ..repository import write_repository

            self._snapshot_dir = Path(tempfile.mkdtemp(prefix="nbserve-snapshot-"))
            self.repository = write_repository(self._snapshot_dir / "models", self.registry.models())
        self._launch(timeout_s)
        self.ready_s = time.perf_counter() - started
        atexit.register(self.stop)
        return self

    def _launch(self, timeout_s: float) -> None:
        http_port, grpc_port, metrics_port = self._ports
        command = [
            sys.executable, "-m", "nbserve.serving.child", str(self.repository),
            "--host", self.host, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
            "--metrics-port", str(metrics_port), "--max-body-bytes", str(self.max_body_bytes),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.token:
            env[TOKEN_ENV] = self.token
        self._ready.clear()
        self._stopping = False
        self.log.clear()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self._reader = threading.Thread(target=self._read_log, name="nbserve-subprocess-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            if self.process.poll() is not None:
                self._reader.join(2)
                raise self._crash_error("the server process exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise self._crash_error(f"the server process was not ready within {timeout_s} s")

    def _read_log(self) -> None:
        process = self.process
        assert process is not None and process.stdout is not None  # set by _launch before this thread
        for line in process.stdout:
            line = line.rstrip("\n")
            if line.startswith(READY_PREFIX) and not self._ready.is_set():
                ports = json.loads(line[len(READY_PREFIX):])
                self.http_port, self.grpc_port, self.metrics_port = (
                    ports["http_port"], ports["grpc_port"], ports["metrics_port"])
                self._ready.set()
                continue
            self.log.append(line)
            _log.info(line)
        process.wait()

    def _crash_error(self, what: str) -> ServerStateError:
        code = self.process.returncode if self.process is not None else None
        tail = "\n".join(list(self.log)[-20:]) or "(no output)"
        return ServerStateError(
            f"{what} (exit code {code}); its last log lines:\n{tail}\n",
            hint="fix the error above, then server.restart() or nbserve.serve(mode='subprocess')",
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None and self._ready.is_set()

    @property
    def crashed(self) -> bool:
        return self.process is not None and self.process.poll() is not None and not self._stopping

    def check(self) -> None:
        """Raise ServerStateError carrying the last log lines if the child died on its own."""
        if self.crashed:
            raise self._crash_error("the server process died")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the child (it drains), SIGKILL it after ``timeout_s``; idempotent."""
        atexit.unregister(self.stop)
        process = self.process
        self._stopping = True
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self._snapshot_dir is not None:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
            self._snapshot_dir = None

    def restart(self, timeout_s: float = 30.0) -> SubprocessServer:
        """Stop the child if it runs and start it again on a fresh snapshot of the registry."""
        self.stop()
        self.process = None
        return self.start(timeout_s)

    def __enter__(self) -> SubprocessServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --------------------------------------------------------------------- requests
    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
        timeout_us: int = 0,
        sequence_id: int | str = 0,
        sequence_start: bool = False,
        sequence_end: bool = False,
    ) -> dict[str, Any]:
        """Send one request over HTTP (binary tensors) and return the outputs as NumPy arrays."""
        self.check()
        from .remote import http_infer

        if self._client is None:
            self._client = self.client("http")
        return http_infer(self._client, model, inputs, version=version, outputs=outputs, priority=priority,
                          timeout_us=timeout_us, sequence_id=sequence_id, sequence_start=sequence_start,
                          sequence_end=sequence_end)

    async def ainfer(self, model: str, inputs: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        import asyncio

        return await asyncio.to_thread(self.infer, model, inputs, **options)

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "running": self.is_running,
            "pid": self.pid,
            "http": self.http_address if self.http_port else None,
            "grpc": self.grpc_address if self.grpc_port else None,
            "metrics": self.metrics_url if self.metrics_port else None,
            "repository": str(self.repository) if self.repository else None,
        }

    def __repr__(self) -> str:
        s = self.status()
        state = "running" if s["running"] else ("crashed" if self.crashed else "stopped")
        return f"<nbserve.SubprocessServer {state} pid={s['pid']} http={s['http']} grpc={s['grpc']}>"


# ------------------------------------------------------------------------- the child's side
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="nbserve serve", description="Serve a Triton model repository.")
    parser.add_argument("repository", help="a Triton model repository (config.pbtxt + version folders)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port (default 8002)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    return parser


def run(args: argparse.Namespace) -> int:
    """Serve ``args.repository`` until SIGTERM/SIGINT; print the ready line once listening."""
    from ..repository import read_repository

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    registry = read_repository(args.repository)
    server = Server(
        registry,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        token=os.environ.get(TOKEN_ENV) or None,
        max_body_bytes=args.max_body_bytes,
        repository=args.repository,
    ).start()
    names = ", ".join(registry.names()) or "no models"
    print(f"nbserve serving {names} from {args.repository}", flush=True)
    print(f"  HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}", flush=True)
    print(READY_PREFIX + json.dumps({"http_port": server.http_port, "grpc_port": server.grpc_port,
                                     "metrics_port": server.metrics_port, "pid": os.getpid()}), flush=True)
    stop.wait()
    print("nbserve: stopping (draining in-flight requests)", flush=True)
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
