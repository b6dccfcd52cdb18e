"""Per model-version statistics, counted the way Triton's statistics extension reports them.

Durations are nanoseconds from ``time.monotonic_ns``. Per request: success/fail count and total
duration, queue time, and the compute-input/infer/output time of the batch it ran in (Triton gives
each request its batch's compute durations). Per batch size: how many executions and their compute
durations. ``to_json`` returns the exact shape of Triton's ``/v2/models/stats`` entries.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["ModelStats"]


class ModelStats:
    _FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(self._FIELDS, 0)
        self.ns = dict.fromkeys(self._FIELDS, 0)
        self.inference_count = 0  # rows
        self.execution_count = 0  # batches
        self.last_inference_ms = 0
        self.batches: dict[int, list[int]] = {}  # batch size -> [count, input_ns, infer_ns, output_ns]

    def record_batch(
        self,
        *,
        requests: int,
        rows: int,
        batch_size: int,
        queue_ns: int,
        request_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
    ) -> None:
        """One successful execution: ``queue_ns``/``request_ns`` are summed over its requests."""
        with self._lock:
            counts, ns = self.counts, self.ns
            counts["success"] += requests
            ns["success"] += request_ns
            counts["queue"] += requests
            ns["queue"] += queue_ns
            for field, value in (("compute_input", input_ns), ("compute_infer", infer_ns), ("compute_output", output_ns)):
                counts[field] += requests
                ns[field] += value * requests
            self.inference_count += rows
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)  # a timestamp, as Triton reports it
            entry = self.batches.setdefault(batch_size, [0, 0, 0, 0])
            entry[0] += 1
            entry[1] += input_ns
            entry[2] += infer_ns
            entry[3] += output_ns

    def record_failure(self, *, requests: int, request_ns: int) -> None:
        with self._lock:
            self.counts["fail"] += requests
            self.ns["fail"] += request_ns
            self.last_inference_ms = int(time.time() * 1000)

    def to_json(self, name: str, version: int | str) -> dict[str, Any]:
        with self._lock:
            stats = {field: {"count": self.counts[field], "ns": self.ns[field]} for field in self._FIELDS}
            stats["cache_hit"] = {"count": 0, "ns": 0}
            stats["cache_miss"] = {"count": 0, "ns": 0}
            batch_stats = [
                {
                    "batch_size": size,
                    "compute_input": {"count": count, "ns": input_ns},
                    "compute_infer": {"count": count, "ns": infer_ns},
                    "compute_output": {"count": count, "ns": output_ns},
                }
                for size, (count, input_ns, infer_ns, output_ns) in sorted(self.batches.items())
            ]
            return {
                "name": name,
                "version": str(version),
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": stats,
                "batch_stats": batch_stats,
            }
