"""Prometheus metrics: Triton's names and labels, computed from the core's statistics when scraped."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import nbserve
from nbserve.registry import Registry
from nbserve.serving.metrics import CONTENT_TYPE, TritonCollector
from nbserve.tensors import TensorSpec

NAMES = [
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
]


def _fails(x):
    raise RuntimeError("no")


@pytest.fixture(scope="module")
def server():
    reg = Registry()
    reg.register(lambda x: x + 1, name="plus", inputs=[TensorSpec("x", [2], "FP32")],
                 outputs=[TensorSpec("y", [2], "FP32")], max_batch_size=8)
    reg.register(_fails, name="fails", inputs=[TensorSpec("x", [2], "FP32")],
                 outputs=[TensorSpec("y", [2], "FP32")], max_batch_size=8)
    server = nbserve.Server(reg, grpc=False).start()
    yield server
    server.stop()
    reg.clear()


def scrape(server) -> tuple[str, str]:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        return response.read().decode(), response.headers["Content-Type"]


def samples(text: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in text.splitlines():
        match = re.fullmatch(r'(\w+)\{model="([^"]*)",version="([^"]*)"\} (\S+)', line)
        if match:
            out[match.group(1, 2, 3)] = float(match.group(4))
    return out


def test_metrics_follow_the_core_statistics(server):
    client = httpclient.InferenceServerClient(server.http_address)
    x = httpclient.InferInput("x", [3, 2], "FP32")
    x.set_data_from_numpy(np.ones((3, 2), np.float32))
    for _ in range(4):
        client.infer("plus", [x])
    with pytest.raises(Exception):
        client.infer("fails", [x])
    client.close()

    text, content_type = scrape(server)
    assert content_type == CONTENT_TYPE
    for name in NAMES:  # Triton's exact families: counters without a _total suffix
        assert f"# TYPE {name} counter\n" in text
        assert f"# HELP {name} " in text
    values = samples(text)
    stats = {e["name"]: e for e in server.core.model_statistics()["model_stats"]}
    plus, fails = stats["plus"], stats["fails"]
    assert values[("nv_inference_request_success", "plus", "1")] == plus["inference_stats"]["success"]["count"] == 4
    assert values[("nv_inference_count", "plus", "1")] == plus["inference_count"] == 12
    assert values[("nv_inference_exec_count", "plus", "1")] == plus["execution_count"]
    assert values[("nv_inference_request_failure", "fails", "1")] == fails["inference_stats"]["fail"]["count"] == 1
    assert values[("nv_inference_request_success", "fails", "1")] == 0
    for name, field in (("nv_inference_request_duration_us", "success"), ("nv_inference_queue_duration_us", "queue"),
                        ("nv_inference_compute_infer_duration_us", "compute_infer")):
        assert values[(name, "plus", "1")] == plus["inference_stats"][field]["ns"] // 1000
    assert values[("nv_inference_request_duration_us", "plus", "1")] > 0
    assert re.search(r'^nv_inference_request_success\{model="plus",version="1"\} 4$', text, re.M)


def test_text_parses_as_prometheus(server):
    text, _ = scrape(server)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(NAMES) <= set(families)
    assert all(families[name].type == "counter" for name in NAMES)


def test_collector_plugs_into_a_prometheus_client_registry(server):
    registry = CollectorRegistry()
    registry.register(TritonCollector(server.core))
    text = generate_latest(registry).decode()
    assert 'nv_inference_count' in text and 'model="plus"' in text


def test_other_paths_are_404(server):
    url = server.metrics_url.replace("/metrics", "/nope")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=30)
    assert info.value.code == 404 and b"/metrics" in info.value.read()


def test_metrics_port_is_released_on_stop():
    import socket

    server = nbserve.Server(Registry(), http=False, grpc=False).start()
    port = server.metrics_port
    text, _ = scrape(server)  # no models: the families are declared, without samples
    assert "# TYPE nv_inference_count counter" in text and "{" not in text
    server.stop()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
