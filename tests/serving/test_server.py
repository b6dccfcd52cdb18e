"""Server lifecycle in the kernel and as a subprocess: start, replace, stop, leak nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

import nbserve
from nbserve.errors import ServerStateError


def nbserve_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nbserve")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def registry():
    reg = nbserve.Registry()
    reg.register(lambda x: x * 2, name="double", example=np.ones((1, 3), "float32"))
    return reg


def test_serve_starts_fast_and_answers_every_protocol(registry):
    with nbserve.serve(registry) as server:
        assert server.ready_s < 20  # generous: benchmarks/serving.py reports the real figure
        x = np.ones((2, 3), "float32")
        assert server.infer("double", {"x": x})["output_0"].tolist() == (x * 2).tolist()
        http = server.client("http")
        assert http.is_server_ready() and http.is_model_ready("double")
        grpc = server.client("grpc")
        assert grpc.is_server_live()
        assert "double" in repr(server) and "running" in repr(server)
        assert "<table>" in server._repr_html_()
        http.close()
        grpc.close()


def test_serve_again_replaces_the_server_without_leaks(registry):
    first = nbserve.serve(registry)
    ports = (first.http_port, first.grpc_port, first.metrics_port)
    second = nbserve.serve(registry)
    try:
        assert not first.is_running
        assert all(port_is_closed(p) for p in ports if p not in (second.http_port, second.grpc_port, second.metrics_port))
        assert second.infer("double", {"x": np.ones((1, 3), "float32")})["output_0"].sum() == 6
    finally:
        second.stop()
    assert wait_for(lambda: not nbserve_threads()), nbserve_threads()


def test_stop_is_idempotent_and_releases_everything(registry):
    baseline_fds = open_fds()
    server = nbserve.serve(registry)
    ports = (server.http_port, server.grpc_port, server.metrics_port)
    server.infer("double", {"x": np.ones((1, 3), "float32")})
    server.stop()
    server.stop()
    assert all(port_is_closed(p) for p in ports)
    assert wait_for(lambda: not nbserve_threads()), nbserve_threads()
    assert wait_for(lambda: open_fds() <= baseline_fds + 2), (open_fds(), baseline_fds)
    with pytest.raises(ServerStateError, match="not running.*nbserve.serve"):
        server.infer("double", {"x": np.ones((1, 3), "float32")})


def test_twenty_start_stop_cycles_leak_nothing(registry):
    nbserve.serve(registry).stop()  # first start pays one-time imports and lazily created fds
    baseline_fds, baseline_threads = open_fds(), threading.active_count()
    for _ in range(20):
        server = nbserve.serve(registry)
        assert server.infer("double", {"x": np.ones((1, 3), "float32")})["output_0"].sum() == 6
        server.stop()
    assert wait_for(lambda: threading.active_count() <= baseline_threads), threading.enumerate()
    assert wait_for(lambda: open_fds() <= baseline_fds + 2), (open_fds(), baseline_fds)


def test_a_taken_port_gives_a_clear_error(registry):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServerStateError, match="port"):
            nbserve.serve(registry, http_port=port)
    assert wait_for(lambda: not nbserve_threads()), nbserve_threads()


def test_bearer_token_is_required_when_set(registry):
    with nbserve.serve(registry, token="s3cret") as server:
        anonymous = httpclient.InferenceServerClient(server.http_address)
        assert anonymous.is_server_live()  # health checks stay open for probes
        with pytest.raises(Exception, match="401|[Uu]nauthori"):
            anonymous.get_model_metadata("double")
        authorized = httpclient.InferenceServerClient(server.http_address)
        meta = authorized.get_model_metadata("double", headers={"Authorization": "Bearer s3cret"})
        assert meta["name"] == "double"
        anonymous.close()
        authorized.close()


def test_binding_beyond_loopback_without_a_token_warns(registry):
    with pytest.warns(UserWarning, match="without a token"):
        server = nbserve.serve(registry, host="0.0.0.0", grpc=False, metrics=False)
    server.stop()


# ----------------------------------------------------------------------------- subprocess mode
def test_subprocess_mode_serves_a_snapshot_and_stops_by_pid(registry):
    server = nbserve.serve(registry, mode="subprocess")
    try:
        assert server.ready_s < 30  # generous; benchmarks/serving.py reports the real figure
        assert server.infer("double", {"x": np.ones((1, 3), "float32")})["output_0"].sum() == 6
        client = server.client("http")
        assert client.get_model_config("double")["max_batch_size"] == 64
        client.close()
        pid = server.pid
    finally:
        server.stop()
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_subprocess_crash_is_reported_with_its_log_and_restart_works(registry):
    server = nbserve.serve(registry, mode="subprocess")
    try:
        os.kill(server.pid, signal.SIGKILL)
        assert wait_for(lambda: server.crashed)
        with pytest.raises(ServerStateError, match="died.*exit code -9.*last log lines"):
            server.infer("double", {"x": np.ones((1, 3), "float32")})
        server.restart()
        assert server.infer("double", {"x": np.ones((1, 3), "float32")})["output_0"].sum() == 6
    finally:
        server.stop()


def test_subprocess_dies_with_the_kernel(tmp_path):
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent("""
        import sys, time, numpy as np, nbserve
        nbserve.register(lambda x: x + 1, name="plus", example=np.ones((1, 2), "float32"))
        server = nbserve.serve(mode="subprocess")
        print(server.pid, flush=True)
        time.sleep(60)
    """))
    kernel = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(kernel.stdout.readline())
        os.kill(child_pid, 0)  # alive
    finally:
        kernel.kill()
        kernel.wait()
        kernel.stdout.close()

    def gone() -> bool:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return True
        # A zombie whose parent died is re-parented and reaped by init; treat "Z" as gone.
        with open(f"/proc/{child_pid}/stat") as f:
            return f.read().split()[2] == "Z"

    assert wait_for(gone, 15)


def test_cli_serves_a_repository(tmp_path, registry):
    repo = nbserve.write_repository(tmp_path / "repo", registry.models())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http_port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "nbserve.cli", "serve", str(repo), "--http-port", str(http_port),
         "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("NBSERVE_READY"):
                break
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        assert client.is_model_ready("double"), lines
        client.close()
    finally:
        process.terminate()
        assert process.wait(15) == 0
        process.stdout.close()
