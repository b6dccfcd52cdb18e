"""Benchmark rows as text (a perf_analyzer-like table for the terminal) and as HTML (for notebooks).

Latencies are printed in microseconds, as perf_analyzer prints them, and followed by its summary
lines ("Concurrency: 4, throughput: 1234.5 infer/sec, latency 812 usec") so that output from the two
tools can be read side by side.

>>> print(format_table([{"load": "concurrency", "concurrency": 1, "infer_per_s": 1461.2, "p50_ms": 0.665,
...     "p90_ms": 0.748, "p95_ms": 0.794, "p99_ms": 1.022, "avg_ms": 0.679, "errors": 0,
...     "server_queue_ms": 0.105, "server_compute_infer_ms": 0.218, "server_avg_batch_size": 1.0,
...     "stable": True}]).splitlines()[-1])
Concurrency: 1, throughput: 1461.2 infer/sec, latency 679 usec
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_table", "html_table", "COLUMNS"]

# (header, row key, scale, format)
COLUMNS: list[tuple[str, str, float, str]] = [
    ("Infer/s", "infer_per_s", 1.0, "{:,.1f}"),
    ("p50 us", "p50_ms", 1000.0, "{:,.0f}"),
    ("p90 us", "p90_ms", 1000.0, "{:,.0f}"),
    ("p95 us", "p95_ms", 1000.0, "{:,.0f}"),
    ("p99 us", "p99_ms", 1000.0, "{:,.0f}"),
    ("Avg us", "avg_ms", 1000.0, "{:,.0f}"),
    ("Errors", "errors", 1.0, "{:,.0f}"),
    ("Queue us", "server_queue_ms", 1000.0, "{:,.0f}"),
    ("Compute us", "server_compute_infer_ms", 1000.0, "{:,.0f}"),
    ("Avg batch", "server_avg_batch_size", 1.0, "{:,.2f}"),
]


def _level(row: Mapping[str, Any]) -> tuple[str, str]:
    if row.get("load") == "rate":
        return "Request rate", f"{row.get('request_rate'):g}"
    return "Concurrency", str(row.get("concurrency"))


def _cell(row: Mapping[str, Any], key: str, scale: float, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else fmt.format(value * scale)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of ``rows`` followed by perf_analyzer's summary lines."""
    if not rows:
        return "(no results)"
    level_header = _level(rows[0])[0]
    headers = [level_header, *(c[0] for c in COLUMNS), "Stable"]
    body = [[_level(r)[1], *(_cell(r, key, scale, fmt) for _, key, scale, fmt in COLUMNS),
             "yes" if r.get("stable") else "no"] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in body)
    lines.append("")
    lines.append("Inferences/Second vs. Client Average Batch Latency")
    for row in rows:
        name, value = _level(row)
        latency = row.get("avg_ms")
        latency_text = "-" if latency is None else f"{latency * 1000:.0f}"
        lines.append(f"{name}: {value}, throughput: {row.get('infer_per_s') or 0:.1f} infer/sec, "
                     f"latency {latency_text} usec")
    return "\n".join(lines)


def html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The same table as HTML (for ``_repr_html_``)."""
    if not rows:
        return "<p>(no results yet)</p>"
    headers = [_level(rows[0])[0], *(c[0] for c in COLUMNS), "Stable"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in
                         [_level(r)[1], *(_cell(r, key, scale, fmt) for _, key, scale, fmt in COLUMNS),
                          "yes" if r.get("stable") else "no"]) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
