"""Helpers of the benchmark tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

SLOW_S = 0.020  # the 'slow' model's sleep per request

FAST = dict(measurement_interval_ms=250, warmup_s=0.1, stability_windows=2, max_windows=3, tick_s=0.05,
            live=False)
"""Short windows: each level takes well under a second."""


def bench_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nbserve-bench") and t.is_alive()]


def generator_processes() -> list[int]:
    """Children of this process that are load generators (from /proc)."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"nbserve.bench._worker" in cmdline:
            found.append(int(entry.name))
    return found


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)  # polling with a deadline
