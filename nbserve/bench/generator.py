"""Load generators: where the load loop runs, behind one blocking API for the orchestrator.

* :class:`LocalGenerator` — the load loop on threads of this process. Used for the in-process API
  (it has to share the server's process to call it).
* :class:`ProcessGenerator` — a child process (``python -m nbserve.bench._worker``) for HTTP and
  gRPC, so the client never competes with an in-kernel server for the GIL. Commands and records
  travel over a ``multiprocessing`` pipe; the child exits when told, or by itself when the pipe
  closes (the parent died), so it never outlives the kernel.
* :class:`GeneratorGroup` — several of them sharing one load (``processes=N``), for machines where
  one client process is the bottleneck.

All have ``start(load)``, ``take() -> Records``, ``halt(timeout_s) -> Records`` and ``close()``;
``close`` is idempotent and leaves no thread or process behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ..errors import ServerStateError
from ._engine import EngineHost, Load, Records
from ._transports import TransportSpec, make_transport

__all__ = ["LocalGenerator", "ProcessGenerator", "GeneratorGroup", "make_generator"]

_ANSWER_S = 30.0  # how long the child may take to answer a command (a halt adds its own timeout)


def make_host(spec: TransportSpec, core: Any = None) -> Any:
    """The load loop for ``spec`` in this process: grpc's C-core host for gRPC where it can run
    (see :mod:`._grpc_core`), else an :class:`EngineHost` with the spec's transport."""
    if spec.protocol == "grpc" and spec.grpc_engine in ("auto", "core"):
        from . import _grpc_core

        if _grpc_core.available():
            return _grpc_core.CoreGrpcHost(spec)
        if spec.grpc_engine == "core":
            raise ServerStateError("grpc's C-core layer is not usable with this grpcio",
                                   hint='use grpc_engine="aio" (or "auto")')
    return EngineHost(lambda: make_transport(spec, core), name=f"nbserve-bench-{spec.protocol}")


class LocalGenerator:
    """The load loop on a thread of this process."""

    def __init__(self, spec: TransportSpec, core: Any = None) -> None:
        self.spec = spec
        self._host = make_host(spec, core)

    def start(self, load: Load) -> None:
        self._host.start(load)

    def take(self) -> Records:
        return self._host.take()

    def halt(self, timeout_s: float = 10.0) -> Records:
        return self._host.halt(timeout_s)

    def close(self) -> None:
        self._host.close()


class ProcessGenerator:
    """The load loop in a child Python process."""

    def __init__(self, spec: TransportSpec) -> None:
        self.spec = spec
        ours, theirs = multiprocessing.Pipe(duplex=True)
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        # The child imports nbserve from wherever this process did (an editable checkout included).
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        if spec.protocol == "grpc" and "GRPC_EXPERIMENTS" not in env:
            # grpcio's EventEngine client does socket I/O on its own threads and hands every
            # completion to the queue our thread waits on: a thread hop per call. Without it the
            # waiting thread does the I/O itself: measured here against Triton, 60 instead of 78 us
            # of client CPU per call at concurrency 16, 125 instead of 165 us at concurrency 1.
            # Only this process is affected; an unknown experiment name is logged and ignored.
            env["GRPC_EXPERIMENTS"] = "-event_engine_client,-event_engine_for_all_other_endpoints"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nbserve.bench._worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self._stderr, env=env,
            )
        finally:
            theirs.close()
        self._conn = ours
        self._sequence = 0
        try:
            self._ask("setup", spec)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _ask(self, command: str, argument: Any = None, timeout_s: float = _ANSWER_S) -> Any:
        # Numbered, so that an answer left unread by an interrupted call (Ctrl-C in a notebook)
        # is skipped instead of being taken for the next command's.
        self._sequence += 1
        sequence = self._sequence
        deadline = time.monotonic() + timeout_s
        try:
            self._conn.send((sequence, command, argument))
            while True:
                if not self._conn.poll(max(deadline - time.monotonic(), 0)):
                    raise ServerStateError(
                        f"the load generator process did not answer '{command}' in {timeout_s:.0f} s",
                        hint="stop the run; the process is ended with it")
                answered, ok, value = self._conn.recv()
                if answered == sequence:
                    break
        except (EOFError, OSError, BrokenPipeError):
            raise ServerStateError("the load generator process ended unexpectedly",
                                   got=self._stderr_tail() or f"exit code {self.process.poll()}") from None
        if not ok:
            raise ServerStateError(f"the load generator failed: {value}", got=self._stderr_tail() or None)
        return value

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace").strip()[-800:]
        return ""

    def start(self, load: Load) -> None:
        self._ask("start", load)

    def take(self) -> Records:
        return self._ask("take")

    def halt(self, timeout_s: float = 10.0) -> Records:
        return self._ask("halt", timeout_s, timeout_s=timeout_s + _ANSWER_S)

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not within 10 s. Idempotent."""
        process = self.process if hasattr(self, "process") else None
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError, EOFError, BrokenPipeError):
                self._conn.send((0, "exit", None))
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        with contextlib.suppress(OSError):
            self._conn.close()
        with contextlib.suppress(OSError):
            self._stderr.close()


class GeneratorGroup:
    """Several generators sharing each load; records come back merged."""

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = list(members)
        self._active: list[Any] = []

    def start(self, load: Load) -> None:
        parts = load.split(len(self.members))
        self._active = self.members[: len(parts)]
        for member, part in zip(self._active, parts):
            member.start(part)

    def take(self) -> Records:
        return Records.merge([m.take() for m in self._active])

    def halt(self, timeout_s: float = 10.0) -> Records:
        records = Records.merge([m.halt(timeout_s) for m in self._active])
        self._active = []
        return records

    def close(self) -> None:
        for member in self.members:
            member.close()


def make_generator(spec: TransportSpec, *, core: Any = None, processes: int = 1) -> Any:
    """The generator for ``spec``: a thread for the in-process API, else ``processes`` child processes."""
    if spec.protocol == "inprocess":
        return LocalGenerator(spec, core)
    if processes == 1:
        return ProcessGenerator(spec)
    members: list[ProcessGenerator] = []
    try:
        for _ in range(processes):
            members.append(ProcessGenerator(spec))
    except BaseException:
        for member in members:
            member.close()
        raise
    return GeneratorGroup(members)
