"""What a benchmark window measured: client latencies and throughput, and the server's own statistics.

Pure functions over plain data (no threads, no I/O), so they are easy to test and reuse:

* :class:`ServerSnapshot` reads one model's entries of Triton's statistics JSON (the in-kernel core,
  HTTP ``/v2/models/{m}/stats`` and gRPC ``ModelStatistics`` all give that shape) and
  :meth:`ServerSnapshot.delta` turns two snapshots into per-request queue and compute times, the
  average batch size and the batch-size histogram over the time between them, as perf_analyzer
  reports its "Server:" block.
* :func:`summarize` turns a window's request timestamps into throughput and percentiles.
* :func:`is_stable` is perf_analyzer's stability rule: the last N windows' throughput and average
  latency all lie within ``percentage`` of their mean.

>>> summary = summarize(np.array([0, 0, 0, 0]), np.array([1_000_000, 2_000_000, 3_000_000, 4_000_000]),
...                     duration_s=0.5)
>>> summary["requests"], summary["requests_per_s"], summary["p50_ms"]
(4, 8.0, 2.5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ServerSnapshot", "summarize", "is_stable", "PERCENTILES"]

PERCENTILES = (50, 90, 95, 99)
_TIMES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclasses.dataclass(frozen=True)
class ServerSnapshot:
    """Cumulative counters of one model (all its versions summed) at one moment."""

    success: int = 0
    fail: int = 0
    inference_count: int = 0
    execution_count: int = 0
    ns: Mapping[str, int] = dataclasses.field(default_factory=dict)       # queue, compute_* -> total ns
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)   # queue, compute_* -> requests
    batches: Mapping[int, int] = dataclasses.field(default_factory=dict)  # batch size -> executions

    @classmethod
    def from_json(cls, statistics: Mapping[str, Any], model: str | None = None) -> ServerSnapshot:
        """Sum the entries of Triton's statistics JSON (``{"model_stats": [...]}``) for ``model``.

        Integers may arrive as strings (protobuf's JSON form of int64, from gRPC); both are read.
        """
        success = fail = inference = execution = 0
        ns = dict.fromkeys(_TIMES, 0)
        counts = dict.fromkeys(_TIMES, 0)
        batches: dict[int, int] = {}
        for entry in statistics.get("model_stats") or []:
            if model is not None and entry.get("name") != model:
                continue
            stats = entry.get("inference_stats") or {}
            success += _int((stats.get("success") or {}).get("count"))
            fail += _int((stats.get("fail") or {}).get("count"))
            inference += _int(entry.get("inference_count"))
            execution += _int(entry.get("execution_count"))
            for name in _TIMES:
                ns[name] += _int((stats.get(name) or {}).get("ns"))
                counts[name] += _int((stats.get(name) or {}).get("count"))
            for batch in entry.get("batch_stats") or []:
                size = _int(batch.get("batch_size"))
                batches[size] = batches.get(size, 0) + _int((batch.get("compute_infer") or {}).get("count"))
        return cls(success, fail, inference, execution, ns, counts, batches)

    @property
    def requests(self) -> int:
        """Requests the server finished, successfully or not."""
        return self.success + self.fail

    def delta(self, earlier: ServerSnapshot) -> dict[str, Any]:
        """What happened between ``earlier`` and this snapshot, per request where it is a time.

        Returns a dict: ``server_requests``, ``server_failures``, ``server_inferences``,
        ``server_executions``, ``server_queue_ms``, ``server_compute_input_ms``,
        ``server_compute_infer_ms``, ``server_compute_output_ms`` (averages per request; None without
        requests), ``server_avg_batch_size`` and ``server_batch_sizes`` ({size: executions}).
        A model reloaded in between (its counters restarted) reads as if counted from zero.
        """
        base = earlier if self.requests >= earlier.requests else ServerSnapshot()
        out: dict[str, Any] = {
            "server_requests": self.requests - base.requests,
            "server_failures": self.fail - base.fail,
            "server_inferences": self.inference_count - base.inference_count,
            "server_executions": self.execution_count - base.execution_count,
        }
        for name in _TIMES:
            count = self.counts.get(name, 0) - base.counts.get(name, 0)
            total = self.ns.get(name, 0) - base.ns.get(name, 0)
            out[f"server_{name}_ms"] = total / count / 1e6 if count > 0 else None
        executions = out["server_executions"]
        out["server_avg_batch_size"] = out["server_inferences"] / executions if executions > 0 else None
        sizes = {size: count - base.batches.get(size, 0) for size, count in self.batches.items()}
        out["server_batch_sizes"] = {size: n for size, n in sorted(sizes.items()) if n > 0}
        return out


def _int(value: Any) -> int:
    return int(value) if value not in (None, "") else 0


def summarize(starts_ns: np.ndarray, ends_ns: np.ndarray, *, duration_s: float, rows_per_request: int = 1,
              errors: int = 0) -> dict[str, Any]:
    """Throughput and latency of the requests that completed in a window of ``duration_s``.

    Args:
        starts_ns, ends_ns: send and completion times of the window's successful requests.
        duration_s: the window's length.
        rows_per_request: the batch size of each request (inferences per request, as perf_analyzer counts).
        errors: failed requests in the window.

    Returns:
        ``requests``, ``errors``, ``requests_per_s``, ``infer_per_s``, ``avg_ms``, ``p50_ms``,
        ``p90_ms``, ``p95_ms``, ``p99_ms``, ``min_ms``, ``max_ms`` (latencies None without requests).
    """
    latencies_ms = (np.asarray(ends_ns, np.int64) - np.asarray(starts_ns, np.int64)) / 1e6
    count = int(latencies_ms.size)
    rate = count / duration_s if duration_s > 0 else 0.0
    out: dict[str, Any] = {"requests": count, "errors": int(errors), "requests_per_s": rate,
                           "infer_per_s": rate * rows_per_request}
    if count:
        values = np.percentile(latencies_ms, PERCENTILES)
        out["avg_ms"] = float(latencies_ms.mean())
        out.update({f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, values)})
        out["min_ms"] = float(latencies_ms.min())
        out["max_ms"] = float(latencies_ms.max())
    else:
        out.update(dict.fromkeys(["avg_ms", *(f"p{p}_ms" for p in PERCENTILES), "min_ms", "max_ms"], None))
    return out


def is_stable(windows: Sequence[Mapping[str, Any]], *, percentage: float, count: int = 3,
              latency: str = "avg_ms") -> bool:
    """perf_analyzer's rule: the last ``count`` windows' throughput and latency lie within
    ``percentage`` % of their mean (each of them, both figures)."""
    if len(windows) < count:
        return False
    recent = windows[-count:]
    for key in ("requests_per_s", latency):
        values = [w.get(key) for w in recent]
        if any(v is None for v in values):
            return False
        mean = sum(values) / count
        if mean <= 0:
            return False
        if any(abs(v - mean) > mean * percentage / 100 for v in values):
            return False
    return True


def merge_batch_sizes(parts: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Sum several ``{batch size: executions}`` histograms."""
    total: dict[int, int] = {}
    for part in parts:
        for size, n in part.items():
            total[int(size)] = total.get(int(size), 0) + int(n)
    return dict(sorted(total.items()))
