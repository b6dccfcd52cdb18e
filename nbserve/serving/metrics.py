"""Prometheus metrics with Triton's names, on their own port (``GET /metrics``).

Every value is computed at scrape time from ``core.model_statistics()`` by a custom
``prometheus_client`` collector: nothing is counted on the request path. The families, labels and
text are Triton's, so dashboards and alerts written for Triton work unchanged::

    # HELP nv_inference_request_success Number of successful inference requests, all batch sizes
    # TYPE nv_inference_request_success counter
    nv_inference_request_success{model="scorer",version="1"} 42

Triton names its counters without the ``_total`` suffix that ``prometheus_client`` appends, so the
text is written here (:func:`exposition`) from the collector's metric families rather than with
``generate_latest``; the collector still plugs into any ``prometheus_client`` registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["TritonCollector", "exposition", "start_metrics", "MetricsEndpoint", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (name, help, how to read it from one model_stats entry), in Triton's order.
_COUNTERS: list[tuple[str, str, Any]] = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s["inference_stats"]["success"]["count"]),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     lambda s: s["inference_stats"]["fail"]["count"]),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)",
     lambda s: s["inference_count"]),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)",
     lambda s: s["execution_count"]),
    ("nv_inference_request_duration_us",
     "Cumulative inference request duration in microseconds (includes cached requests)",
     lambda s: s["inference_stats"]["success"]["ns"] // 1000),
    ("nv_inference_queue_duration_us",
     "Cumulative inference queuing duration in microseconds (includes cached requests)",
     lambda s: s["inference_stats"]["queue"]["ns"] // 1000),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds (does not include cached requests)",
     lambda s: s["inference_stats"]["compute_input"]["ns"] // 1000),
    ("nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds (does not include cached requests)",
     lambda s: s["inference_stats"]["compute_infer"]["ns"] // 1000),
    ("nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds (does not include cached requests)",
     lambda s: s["inference_stats"]["compute_output"]["ns"] // 1000),
]


class TritonCollector(Collector):
    """Triton's per-model counters, read from ``core.model_statistics()`` when scraped.

    Sample names are exactly Triton's (no ``_total``); labels are ``model`` and ``version``.
    """

    def __init__(self, core: Any) -> None:
        self.core = core

    def describe(self) -> list[Metric]:
        # Registering must not scrape the core (prometheus_client calls describe() on register).
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self.core.model_statistics()["model_stats"]
        for name, documentation, read in _COUNTERS:
            family = Metric(name, documentation, "counter")
            for entry in stats:
                family.add_sample(name, {"model": entry["name"], "version": str(entry["version"])}, read(entry))
            yield family


def _escape_help(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def exposition(collectors: Iterable[Collector]) -> bytes:
    """The Prometheus text format (0.0.4) of the collectors' metrics, sample names as given."""
    lines: list[str] = []
    for collector in collectors:
        for metric in collector.collect():
            lines.append(f"# HELP {metric.name} {_escape_help(metric.documentation)}")
            lines.append(f"# TYPE {metric.name} {metric.type}")
            for sample in metric.samples:
                labels = ",".join(f'{key}="{_escape(str(value))}"' for key, value in sample.labels.items())
                labels = f"{{{labels}}}" if labels else ""
                value = sample.value
                text = str(value) if isinstance(value, int) else floatToGoString(value)
                lines.append(f"{sample.name}{labels} {text}")
    lines.append("")
    return "\n".join(lines).encode()


class MetricsEndpoint:
    """A running metrics server: ``port`` is the real port; ``close()`` releases it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()

    def __repr__(self) -> str:
        return f"<MetricsEndpoint http://{self.host}:{self.port}/metrics>"


def create_metrics_app(core: Any) -> web.Application:
    collector = TritonCollector(core)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition([collector]), headers={"Content-Type": CONTENT_TYPE})

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="Not Found: the metrics are at GET /metrics\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def start_metrics(core: Any, host: str, port: int) -> MetricsEndpoint:
    """Serve Triton-named Prometheus metrics for ``core`` at ``http://host:port/metrics`` (0: a free port)."""
    runner = web.AppRunner(create_metrics_app(core), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=2.0)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return MetricsEndpoint(runner, host, bound)
