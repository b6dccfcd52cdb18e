"""The load generator process: ``python -m nbserve.bench._worker FD``.

FD is this process's end of a ``multiprocessing`` pipe. Commands arrive as ``(number, name, argument)``
tuples — ``setup`` (a TransportSpec), ``start`` (a Load), ``take``, ``halt`` (a timeout), ``exit`` —
and each gets one ``(number, ok, value)`` answer. The engine runs on its own thread and event loop; this
main thread only serves the pipe. When the pipe closes (the parent exited or was killed), the
process closes its engine and exits, so a generator never outlives the kernel that started it.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import sys
from typing import Any


def serve(conn: multiprocessing.connection.Connection) -> None:
    from .generator import make_host

    host: Any = None
    try:
        while True:
            try:
                sequence, command, argument = conn.recv()
            except (EOFError, OSError):
                return
            if command == "exit":
                return
            try:
                value: Any = None
                if command == "setup":
                    host = make_host(argument)
                elif host is None:
                    raise RuntimeError("the generator was not set up")
                elif command == "start":
                    host.start(argument)
                elif command == "take":
                    value = host.take()
                elif command == "halt":
                    value = host.halt(float(argument))
                else:
                    raise RuntimeError(f"unknown command {command!r}")
            except Exception as exc:
                conn.send((sequence, False, f"{type(exc).__name__}: {exc}"))
            else:
                conn.send((sequence, True, value))
    finally:
        if host is not None:
            host.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    conn = multiprocessing.connection.Connection(int(args[0]))
    try:
        serve(conn)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    # BLAS in a client process only costs threads: the generator never runs a model.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
