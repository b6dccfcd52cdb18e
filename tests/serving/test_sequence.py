"""Stateful models through Triton's sequence batcher: in-process, HTTP and gRPC with the real tritonclient.

A stateful model here is a running sum: every step adds its input to the sequence's state and
returns the new total, so any mix-up between sequences, a lost step or a step run twice shows up in
the numbers. Every error a client can cause is checked for its status and its words.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import queue
import random
import re
import threading
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import nbserve
from nbserve.errors import ConfigError, InvalidInput, ServerBusy, SignatureError
from nbserve.registry import Registry
from nbserve.serving.core import InferenceCore
from nbserve.stateful import StateSpec, register_stateful

X = np.ones((1, 2), "float32")


def accumulate(x, total):
    total = total + x
    return {"sum": total * 1, "total": total}


def build_registry() -> Registry:
    reg = Registry()
    example = {"x": X}
    register_stateful(accumulate, name="acc", state=StateSpec("total", [2]), example=example, max_batch_size=8,
                      registry=reg)
    register_stateful(accumulate, name="acc_oldest", state=StateSpec("total", [2]), example=example,
                      max_batch_size=4, registry=reg,
                      sequence_batching={"oldest": {"max_queue_delay_microseconds": 20_000_000,
                                                    "preferred_batch_size": [4]}})
    register_stateful(accumulate, name="acc_small", state=StateSpec("total", [2]), example=example,
                      max_batch_size=2, registry=reg)
    register_stateful(accumulate, name="acc_idle", state=StateSpec("total", [2]), example=example,
                      max_batch_size=4, registry=reg, sequence_batching={"max_sequence_idle_microseconds": 200_000})

    def with_id(x, total, CORRID):
        total = total + x
        return {"sum": total * 1, "corrid": CORRID, "total": total}

    register_stateful(with_id, name="acc_corrid", state=StateSpec("total", [2]), example=example, max_batch_size=4,
                      registry=reg, sequence_batching={"control_input": [
                          {"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_UINT64"}]}]})
    return reg


@pytest.fixture(scope="module")
def server():
    reg = build_registry()
    server = nbserve.Server(reg, metrics=False).start()
    yield server
    server.stop()
    reg.clear()


def http_step(client: Any, model: str, seq: Any, value: float, **flags: Any) -> dict[str, np.ndarray]:
    x = httpclient.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.full((1, 2), value, np.float32))
    result = client.infer(model, [x], sequence_id=seq, **flags)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def grpc_step(client: Any, model: str, seq: Any, value: float, **flags: Any) -> dict[str, np.ndarray]:
    x = grpcclient.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.full((1, 2), value, np.float32))
    result = client.infer(model, [x], sequence_id=seq, **flags)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def stats(server: Any, model: str) -> dict[str, Any]:
    return server.core.model_statistics(model)["model_stats"][0]


# ----------------------------------------------------------------------------- isolation
def _run_interleaved(step, ids: list[Any], steps: int, threads: int, model: str = "acc") -> None:
    """Step every sequence ``steps`` times, in a shuffled order, from several threads at once."""
    rng = random.Random(7)
    values = {seq: [rng.randint(1, 9) for _ in range(steps)] for seq in ids}
    owners = [ids[i::threads] for i in range(threads)]
    failures: list[BaseException] = []

    def drive(own: list[Any]) -> None:
        try:
            done = dict.fromkeys(own, 0)
            order = [seq for seq in own for _ in range(steps)]
            random.Random(hash(tuple(map(str, own)))).shuffle(order)
            for seq in order:
                k = done[seq]
                out = step(model, seq, values[seq][k], sequence_start=k == 0, sequence_end=k == steps - 1)
                expected = float(sum(values[seq][: k + 1]))
                assert out["sum"].tolist() == [[expected, expected]], (seq, k, out)
                assert out["total"].tolist() == [[expected, expected]], (seq, k, out)
                done[seq] += 1
        except BaseException as exc:  # reported below, with the others
            failures.append(exc)

    workers = [threading.Thread(target=drive, args=(own,)) for own in owners]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not failures, failures[0]


def test_interleaved_sequences_keep_their_state_over_http(server):
    clients = threading.local()

    def step(model, seq, value, **flags):
        if not hasattr(clients, "c"):
            clients.c = httpclient.InferenceServerClient(server.http_address)
        return http_step(clients.c, model, seq, value, **flags)

    # uint64 ids beyond int64, small ids and string ids, all at once
    ids = [1, 2, 3, 2**64 - 1, 2**63 + 5, "alpha", "beta", "γ-seq"]
    _run_interleaved(step, ids, steps=6, threads=4)
    assert stats(server, "acc")["sequence_stats"]["active"] == 0  # every sequence ended


def test_interleaved_sequences_keep_their_state_over_grpc(server):
    clients = threading.local()

    def step(model, seq, value, **flags):
        if not hasattr(clients, "c"):
            clients.c = grpcclient.InferenceServerClient(server.grpc_address)
        return grpc_step(clients.c, model, seq, value, **flags)

    _run_interleaved(step, [11, 12, 13, 14, "g1", "g2"], steps=5, threads=3)


def test_grpc_aio_engine_carries_sequences(monkeypatch):
    """The grpc.aio engine (the fallback) goes through core.infer: unary and streamed sequences."""
    monkeypatch.setenv("NBSERVE_GRPC_ENGINE", "aio")
    reg = Registry()
    register_stateful(accumulate, name="acc", state=StateSpec("total", [2]), example={"x": X}, registry=reg)
    aio_server = nbserve.Server(reg, http=False, metrics=False).start()
    try:
        client = grpcclient.InferenceServerClient(aio_server.grpc_address)
        _run_interleaved(lambda model, seq, value, **flags: grpc_step(client, model, seq, value, **flags),
                         [21, 22, "h"], steps=4, threads=1)
        with pytest.raises(InferenceServerException, match="has not been started") as info:
            grpc_step(client, "acc", 21, 1.0)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        aio_server.stop()
        reg.clear()


def test_interleaved_sequences_keep_their_state_in_process(server):
    def step(model, seq, value, **flags):
        return server.infer(model, {"x": np.full((1, 2), value, np.float32)}, sequence_id=seq, **flags)

    _run_interleaved(step, list(range(100, 108)), steps=5, threads=4)


def test_aio_in_process_sequences(server):
    async def run() -> list[float]:
        async def sequence(seq: int) -> float:
            out = None
            for k in range(3):
                out = await server.ainfer("acc", {"x": np.full((1, 2), seq, np.float32)}, sequence_id=seq,
                                          sequence_start=k == 0, sequence_end=k == 2)
            return float(out["sum"][0, 0])

        return await asyncio.gather(*[sequence(seq) for seq in range(200, 206)])

    assert asyncio.run(run()) == [3.0 * seq for seq in range(200, 206)]


def test_grpc_stream_carries_sequences_in_order(server):
    """tritonclient's stream, as its sequence examples use it: all requests sent, then read."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_address)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sent = []
        for k in range(4):
            for seq, value in ((301, 1.0), (302, 10.0)):
                x = grpcclient.InferInput("x", [1, 2], "FP32")
                x.set_data_from_numpy(np.full((1, 2), value, np.float32))
                client.async_stream_infer("acc", [x], request_id=f"{seq}-{k}", sequence_id=seq,
                                          sequence_start=k == 0, sequence_end=k == 3)
                sent.append((seq, k, value))
        got = {}
        for _ in sent:
            result, error = results.get(timeout=30)
            assert error is None, error
            got[result.get_response().id] = result.as_numpy("sum")[0, 0]
    finally:
        client.stop_stream()
    assert got == {f"{seq}-{k}": value * (k + 1) for seq, k, value in sent}


# ----------------------------------------------------------------------------- batching
def test_oldest_strategy_batches_across_sequences(server):
    """Four sequences step together: with preferred_batch_size 4 each step runs as one batch of 4."""
    client = httpclient.InferenceServerClient(server.http_address, concurrency=4)
    before = stats(server, "acc_oldest")
    ids = [401, 402, 403, 404]
    for k in range(3):
        x = httpclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(X)
        requests = [client.async_infer("acc_oldest", [x], sequence_id=seq, sequence_start=k == 0,
                                       sequence_end=k == 2) for seq in ids]
        assert [r.get_result().as_numpy("sum")[0, 0] for r in requests] == [k + 1.0] * 4
    after = stats(server, "acc_oldest")
    assert after["inference_count"] - before["inference_count"] == 12
    assert after["execution_count"] - before["execution_count"] == 3
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert sizes.get(4, 0) >= 3, after["batch_stats"]
    # the statistics endpoint shows the same over HTTP
    http_stats = client.get_inference_statistics("acc_oldest")["model_stats"][0]
    assert any(b["batch_size"] == 4 for b in http_stats["batch_stats"])
    assert http_stats["sequence_stats"]["strategy"] == "oldest"
    client.close()


def test_direct_strategy_batches_ready_slots(server):
    """Requests that wait while the instance is busy run together, one row per slot."""
    client = httpclient.InferenceServerClient(server.http_address, concurrency=8)
    before = stats(server, "acc")["execution_count"]
    ids = list(range(501, 509))
    for k in range(4):
        x = httpclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(X)
        requests = [client.async_infer("acc", [x], sequence_id=seq, sequence_start=k == 0, sequence_end=k == 3)
                    for seq in ids]
        assert [r.get_result().as_numpy("sum")[0, 0] for r in requests] == [k + 1.0] * len(ids)
    after = stats(server, "acc")
    assert after["execution_count"] - before <= 32  # never more than one run per request
    assert all(b["batch_size"] <= 8 for b in after["batch_stats"])
    client.close()


# ----------------------------------------------------------------------------- lifecycle
def test_idle_sequences_are_released(server):
    client = httpclient.InferenceServerClient(server.http_address)
    http_step(client, "acc_idle", 601, 1.0, sequence_start=True)
    http_step(client, "acc_idle", 602, 1.0, sequence_start=True)
    assert client.get_inference_statistics("acc_idle")["model_stats"][0]["sequence_stats"]["active"] == 2
    deadline = time.monotonic() + 20
    while stats(server, "acc_idle")["sequence_stats"]["active"] and time.monotonic() < deadline:
        time.sleep(0.02)
    seq_stats = stats(server, "acc_idle")["sequence_stats"]
    assert seq_stats["active"] == 0 and seq_stats["idle_released"] >= 2
    with pytest.raises(InferenceServerException, match=r"sequence 601 has not been started: it was released after "
                       r"200000 us without requests") as info:
        http_step(client, "acc_idle", 601, 1.0)
    assert info.value.status() == "400"
    # the id starts afresh
    assert http_step(client, "acc_idle", 601, 5.0, sequence_start=True)["sum"].tolist() == [[5.0, 5.0]]


def test_an_ended_sequence_id_can_start_again(server):
    client = httpclient.InferenceServerClient(server.http_address)
    http_step(client, "acc", 701, 2.0, sequence_start=True)
    assert http_step(client, "acc", 701, 2.0, sequence_end=True)["sum"].tolist() == [[4.0, 4.0]]
    with pytest.raises(InferenceServerException, match="it already ended"):
        http_step(client, "acc", 701, 1.0)
    assert http_step(client, "acc", 701, 3.0, sequence_start=True, sequence_end=True)["sum"].tolist() == [[3.0, 3.0]]


def test_statistics_show_active_sequences(server):
    client = httpclient.InferenceServerClient(server.http_address)
    base = stats(server, "acc")["sequence_stats"]
    for seq in (801, 802, 803):
        http_step(client, "acc", seq, 1.0, sequence_start=True)
    now = client.get_inference_statistics("acc")["model_stats"][0]["sequence_stats"]
    assert now["active"] == base["active"] + 3 and now["started"] == base["started"] + 3
    http_step(client, "acc", 802, 1.0, sequence_end=True)
    now = stats(server, "acc")["sequence_stats"]
    assert now["active"] == base["active"] + 2 and now["ended"] == base["ended"] + 1
    assert {s["sequence_id"] for s in server.core.loaded_versions()[0].batcher.sequences()} >= {801, 803}
    for seq in (801, 803):
        http_step(client, "acc", seq, 1.0, sequence_end=True)
    # gRPC's statistics message has no field for it, but the rest still parses
    grpc_stats = grpcclient.InferenceServerClient(server.grpc_address).get_inference_statistics("acc")
    assert grpc_stats.model_stats[0].inference_stats.success.count > 0


# ----------------------------------------------------------------------------- errors
ERROR_CASES = [
    # (description, model, sequence_id, flags, batch rows, pattern, HTTP status, gRPC status)
    ("no id", "acc", 0, {}, 1, r"needs a sequence id on every request.*sequence_start=True", "400", "INVALID_ARGUMENT"),
    ("not started", "acc", 9001, {}, 1, r"sequence 9001 has not been started.*sequence_start=True",
     "400", "INVALID_ARGUMENT"),
    ("two rows", "acc", 9002, {"sequence_start": True}, 2, r"exactly one row \(batch size 1\).*got 2",
     "400", "INVALID_ARGUMENT"),
    ("string id, numeric CORRID", "acc_corrid", "text", {"sequence_start": True}, 1,
     r"string sequence_id cannot fill.*CORRID.*integer", "400", "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_cases_answer_clearly(server, case):
    _, model, seq, flags, rows, pattern, http_status, grpc_status = case
    data = np.ones((rows, 2), np.float32)
    x = httpclient.InferInput("x", [rows, 2], "FP32")
    x.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match=pattern) as info:
        httpclient.InferenceServerClient(server.http_address).infer(model, [x], sequence_id=seq, **flags)
    assert info.value.status() == http_status
    g = grpcclient.InferInput("x", [rows, 2], "FP32")
    g.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match=pattern) as info:
        grpcclient.InferenceServerClient(server.grpc_address).infer(model, [g], sequence_id=seq, **flags)
    assert info.value.status() == f"StatusCode.{grpc_status}"
    with pytest.raises(InvalidInput, match=pattern):
        server.infer(model, {"x": data}, sequence_id=seq, **flags)


def test_a_sequence_id_reused_while_active_is_refused(server):
    client = httpclient.InferenceServerClient(server.http_address)
    http_step(client, "acc", 9101, 1.0, sequence_start=True)
    with pytest.raises(InferenceServerException, match=r"sequence 9101 is already active.*sequence_end=True.*"
                       r"1000000 us.*pick a new id") as info:
        http_step(client, "acc", 9101, 1.0, sequence_start=True)
    assert info.value.status() == "400"
    g = grpcclient.InferenceServerClient(server.grpc_address)
    with pytest.raises(InferenceServerException, match="is already active") as info:
        grpc_step(g, "acc", 9101, 1.0, sequence_start=True)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    # the refused start changed nothing: the sequence goes on with its state
    assert http_step(client, "acc", 9101, 1.0, sequence_end=True)["sum"].tolist() == [[2.0, 2.0]]


def test_too_many_concurrent_sequences_is_refused(server):
    client = httpclient.InferenceServerClient(server.http_address)
    http_step(client, "acc_small", 9201, 1.0, sequence_start=True)
    http_step(client, "acc_small", 9202, 1.0, sequence_start=True)
    pattern = r"too many concurrent sequences.*at most 2 active sequences \(1 instance\(s\) x 2 slot\(s\)\).*sequence_end=True"
    with pytest.raises(InferenceServerException, match=pattern) as info:
        http_step(client, "acc_small", 9203, 1.0, sequence_start=True)
    assert info.value.status() == "503"
    with pytest.raises(InferenceServerException, match="too many concurrent sequences") as info:
        grpc_step(grpcclient.InferenceServerClient(server.grpc_address), "acc_small", 9203, 1.0, sequence_start=True)
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    with pytest.raises(ServerBusy, match="too many concurrent sequences"):
        server.infer("acc_small", {"x": X}, sequence_id=9203, sequence_start=True)
    # ending one frees its slot at once
    http_step(client, "acc_small", 9201, 1.0, sequence_end=True)
    assert http_step(client, "acc_small", 9203, 4.0, sequence_start=True)["sum"].tolist() == [[4.0, 4.0]]
    for seq in (9202, 9203):
        http_step(client, "acc_small", seq, 0.0, sequence_end=True)


@pytest.mark.parametrize("params, pattern", [
    ({"sequence_id": -5, "sequence_start": True}, r"sequence_id must be an unsigned 64-bit integer or a string"),
    ({"sequence_id": 1.5}, r"sequence_id must be an unsigned 64-bit integer"),
    ({"sequence_id": 2**64}, r"sequence_id must be an unsigned 64-bit integer"),
    ({"sequence_id": 5, "sequence_start": "yes"}, r"parameter 'sequence_start' must be true or false"),
    ({"sequence_id": 5, "sequence_end": 1}, r"parameter 'sequence_end' must be true or false"),
])
def test_malformed_sequence_parameters_are_400(server, params, pattern):
    body = json.dumps({"parameters": params,
                       "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
    connection = http.client.HTTPConnection(server.http_address, timeout=30)
    connection.request("POST", "/v2/models/acc/infer", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    assert response.status == 400, payload
    assert re.search(pattern, payload["error"]), payload


def test_corrid_control_carries_the_sequence_id(server):
    client = httpclient.InferenceServerClient(server.http_address)
    big = 2**64 - 2
    out = http_step(client, "acc_corrid", big, 1.0, sequence_start=True, sequence_end=True)
    assert out["corrid"].dtype == np.uint64 and out["corrid"].tolist() == [[big]]


def test_a_model_error_fails_that_step_and_keeps_the_state():
    reg = Registry()

    def fragile(x, total):
        if (x < 0).any():
            raise ValueError("negative input")
        total = total + x
        return {"sum": total * 1, "total": total}

    register_stateful(fragile, state=StateSpec("total", [2]), example={"x": X}, registry=reg)
    core = InferenceCore(reg)
    core.start()
    try:
        core.infer_sync("fragile", {"x": X}, sequence_id=1, sequence_start=True)
        with pytest.raises(nbserve.errors.InferenceError, match="negative input"):
            core.infer_sync("fragile", {"x": -X}, sequence_id=1)
        out = core.infer_sync("fragile", {"x": X}, sequence_id=1, sequence_end=True).outputs
        assert out["sum"].tolist() == [[2.0, 2.0]]
    finally:
        core.close()
        reg.clear()


# ----------------------------------------------------------------------------- the model's view
def test_control_inputs_and_state_reach_the_model_with_their_types():
    """A model registered with plain register() and a hand-written sequence_batching section sees
    Triton's control tensors (each kind, each encoding) and its implicit state."""
    seen: list[dict[str, np.ndarray]] = []
    lock = threading.Lock()

    def probe(**tensors):
        with lock:
            seen.append({k: v.copy() for k, v in tensors.items()})
        state = tensors.get("acc_in", np.zeros((len(tensors["x"]), 1), np.int64))
        return {"y": tensors["x"], "acc_out": state + 1}

    reg = Registry()
    reg.register(probe, name="probe", example={"x": np.ones((1, 3), "float32")}, max_batch_size=4,
                 outputs=["y", "acc_out"],
                 sequence_batching={
                     "control_input": [
                         {"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]},
                         {"name": "END", "control": [{"kind": "CONTROL_SEQUENCE_END", "fp32_false_true": [0, 1]}]},
                         {"name": "READY", "control": [{"kind": "CONTROL_SEQUENCE_READY", "bool_false_true": [False, True]}]},
                         {"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_INT32"}]},
                     ],
                     "state": [{"input_name": "acc_in", "output_name": "acc_out", "data_type": "TYPE_INT64", "dims": [1],
                                "initial_state": [{"data_type": "TYPE_INT64", "dims": [1], "zero_data": True}]}],
                 })
    seen.clear()  # the example call during registration
    core = InferenceCore(reg)
    core.start()
    try:
        x = np.ones((1, 3), "float32")
        outs = [core.infer_sync("probe", {"x": x}, sequence_id=2**32 + 7, sequence_start=k == 0,
                                sequence_end=k == 2).outputs for k in range(3)]
    finally:
        core.close()
        reg.clear()
    assert [o["acc_out"].tolist() for o in outs] == [[[1]], [[2]], [[3]]]
    assert [s["START"].tolist() for s in seen] == [[[1]], [[0]], [[0]]] and seen[0]["START"].dtype == np.int32
    assert [s["END"].tolist() for s in seen] == [[[0.0]], [[0.0]], [[1.0]]] and seen[0]["END"].dtype == np.float32
    assert all(s["READY"].tolist() == [[True]] and s["READY"].dtype == np.bool_ for s in seen)
    assert all(s["CORRID"].tolist() == [[7]] and s["CORRID"].dtype == np.int32 for s in seen)  # low 32 bits
    assert [s["acc_in"].tolist() for s in seen] == [[[0]], [[1]], [[2]]]


@pytest.mark.parametrize("section, pattern", [
    ({"control_input": [{"name": "x", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]}]},
     r"control_input 'x' is also declared as a model input"),
    ({"control_input": [{"name": "S", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [1]}]}]},
     r"needs exactly one of int32_false_true.*two values"),
    ({"control_input": [{"name": "C", "control": [{"kind": "CONTROL_SEQUENCE_CORRID"}]}]},
     r"CONTROL_SEQUENCE_CORRID needs a data_type"),
    ({"state": [{"input_name": "h", "output_name": "h", "data_type": "TYPE_FP32", "dims": [-1]}]},
     r"variable dims and no initial_state"),
    ({"state": [{"input_name": "h", "output_name": "h", "data_type": "TYPE_FP32", "dims": [2],
                 "initial_state": [{"data_type": "TYPE_FP32", "dims": [3], "zero_data": True}]}]},
     r"initial_state must have the state's data_type and fixed dims"),
    ({"oldest": {"preferred_batch_size": [9]}}, r"preferred_batch_size must lie between 1 and max_batch_size"),
])
def test_invalid_sequence_batching_configs_are_refused(section, pattern):
    reg = Registry()
    reg.register(lambda **t: {"y": t["x"]}, name="bad", example={"x": np.ones((1, 2), "float32")},
                 max_batch_size=4, sequence_batching=section)
    core = InferenceCore(reg)
    try:
        with pytest.raises(ConfigError, match=pattern):
            core.start()
    finally:
        core.close()
        reg.clear()


# ----------------------------------------------------------------------------- register_stateful
def test_state_can_stay_hidden_and_tuples_work():
    reg = Registry()

    def ema(x, h):
        h = 0.5 * h + 0.5 * x
        return h * 10, h  # (output, new state)

    model = register_stateful(ema, state={"h": np.zeros(3, "float32")}, example=np.ones((1, 3), "float32"),
                              outputs=["scaled"], expose_state=False, registry=reg)
    assert [t.name for t in model.config.output] == ["scaled"]
    core = InferenceCore(reg)
    core.start()
    try:
        x = np.full((1, 3), 8, np.float32)
        outs = [core.infer_sync("ema", {"x": x}, sequence_id="s", sequence_start=k == 0).outputs for k in range(3)]
        assert list(outs[0]) == ["scaled"]
        assert [o["scaled"][0, 0] for o in outs] == [40.0, 60.0, 70.0]
        with pytest.raises(InvalidInput, match="unknown output 'h'"):
            core.infer_sync("ema", {"x": x}, sequence_id="s", outputs=["h"])
        peek = core.loaded_versions()[0].batcher.peek_state("s")
        assert peek["h"].tolist() == [7.0, 7.0, 7.0]
    finally:
        core.close()
        reg.clear()


def test_per_item_and_unbatched_functions():
    reg = Registry()

    def count_words(text, seen):  # one item: a BYTES scalar row and an INT64 state
        return {"total": seen + len(text[0].split()), "seen": seen + len(text[0].split())}

    register_stateful(count_words, state=StateSpec("seen", [1], "INT64", initial=100), batched=False,
                      example={"text": np.array([[b"a b"]], dtype=object)}, registry=reg)

    def unbatched(x, total):
        total = total + x.sum()
        return {"total_out": total.reshape(1), "total": total}

    register_stateful(unbatched, state=StateSpec("total", [1], "FP64"), max_batch_size=0,
                      example={"x": np.ones(4)}, registry=reg)
    core = InferenceCore(reg)
    core.start()
    try:
        words = [core.infer_sync("count_words", {"text": np.array([[s]], dtype=object)}, sequence_id=3,
                                 sequence_start=i == 0).outputs["total"] for i, s in enumerate([b"x y z", b"w"])]
        assert [w.tolist() for w in words] == [[[103]], [[104]]]
        sums = [core.infer_sync("unbatched", {"x": np.full(4, 0.5)}, sequence_id=1, sequence_start=k == 0)
                .outputs["total"].tolist() for k in range(2)]
        assert sums == [[2.0], [4.0]]
    finally:
        core.close()
        reg.clear()


def test_register_stateful_explains_signature_mistakes():
    reg = Registry()
    with pytest.raises(SignatureError, match="did not return its new state 'total'"):
        register_stateful(lambda x, total: {"y": x}, name="forgets", state=StateSpec("total", [2]),
                          example={"x": X}, registry=reg)
    with pytest.raises(SignatureError, match=r"new state does not match.*FP32 \[2\] per sequence, got FP32 \[1\]"):
        register_stateful(lambda x, total: {"y": x, "total": total[:, :1]}, name="shrinks",
                          state=StateSpec("total", [2]), example={"x": X}, registry=reg)
    with pytest.raises(ConfigError, match="a name is both an input and a state.*remove it from the inputs"):
        register_stateful(accumulate, name="leaks", state=StateSpec("total", [2]),
                          example={"x": X, "total": X}, registry=reg)
    with pytest.raises(ConfigError, match="dynamic_batching does not apply"):
        register_stateful(accumulate, state=StateSpec("total", [2]), example={"x": X}, registry=reg,
                          dynamic_batching={})
    with pytest.raises(ConfigError, match="variable dims needs an initial array"):
        StateSpec("h", [-1])
    assert len(reg) == 0


def test_direct_call_is_a_one_step_sequence(registry):
    model = register_stateful(accumulate, state=StateSpec("total", [2], initial=5.0), example={"x": X},
                              registry=registry)
    assert model.infer({"x": X})["sum"].tolist() == [[6.0, 6.0]]


# ----------------------------------------------------------------------------- subprocess mode
@pytest.mark.slow
def test_subprocess_mode_serves_the_exported_model(tmp_path):
    """mode="subprocess" writes the repository (model.py, initial_state file) and serves it read back."""
    reg = Registry()
    register_stateful(accumulate, state=StateSpec("total", [2], initial=np.array([1.0, 2.0], "float32")),
                      example={"x": X}, registry=reg, max_batch_size=4)
    server = nbserve.serve(reg, mode="subprocess", grpc=False, metrics=False)
    try:
        client = httpclient.InferenceServerClient(server.http_address)
        steps = [http_step(client, "accumulate", seq, value, sequence_start=k == 0)["sum"].tolist()
                 for k in range(2) for seq, value in ((1, 1.0), (2, 10.0))]
        assert steps == [[[2.0, 3.0]], [[11.0, 12.0]], [[3.0, 4.0]], [[21.0, 22.0]]]
        assert server.infer("accumulate", {"x": X}, sequence_id=1)["sum"].tolist() == [[4.0, 5.0]]
    finally:
        server.stop()
        reg.clear()


def test_direct_strategy_waits_for_minimum_slot_utilization():
    """minimum_slot_utilization 1.0 with a long delay: a step runs only once every slot has one."""
    reg = Registry()
    register_stateful(accumulate, name="acc", state=StateSpec("total", [2]), example={"x": X}, registry=reg,
                      max_batch_size=2, sequence_batching={"direct": {"max_queue_delay_microseconds": 30_000_000,
                                                                       "minimum_slot_utilization": 1.0}})
    core = InferenceCore(reg)
    core.start()
    try:
        async def run() -> list[float]:
            first = asyncio.ensure_future(core.infer("acc", {"x": X}, sequence_id=1, sequence_start=True))
            await asyncio.sleep(0)
            assert not first.done()
            second = await core.infer("acc", {"x": 3 * X}, sequence_id=2, sequence_start=True)
            return [(await first).outputs["sum"][0, 0], second.outputs["sum"][0, 0]]

        assert asyncio.run(run()) == [1.0, 3.0]
        entry = core.model_statistics("acc")["model_stats"][0]
        assert entry["execution_count"] == 1 and entry["batch_stats"][0]["batch_size"] == 2
    finally:
        core.close()
        reg.clear()


def test_variable_size_states_batch_only_with_their_shape():
    """States with dims -1 of different lengths never share a batch (merging them would fail);
    sequences whose states have the same length do."""
    reg = Registry()
    gate = threading.Event()
    gate.set()

    def history(x, seen):
        gate.wait(30)
        seen = np.concatenate([seen, x], axis=1)
        return {"length": np.full((len(x), 1), seen.shape[1], "int64"), "seen": seen}

    register_stateful(history, state=StateSpec("seen", [-1], "FP32", initial=np.zeros(1, "float32")),
                      example={"x": np.ones((1, 1), "float32")}, registry=reg, max_batch_size=4,
                      sequence_batching={"oldest": {"max_candidate_sequences": 8}})
    core = InferenceCore(reg)
    core.start()
    one = np.ones((1, 1), "float32")
    batcher = core.loaded_versions()[0].batcher
    try:
        async def step(seq: int, start: bool = False) -> int:
            result = await core.infer("history", {"x": one}, sequence_id=seq, sequence_start=start)
            return int(result.outputs["length"][0, 0])

        async def run() -> list[int]:
            assert [await step(1, True), await step(1), await step(2, True)] == [2, 3, 2]
            gate.clear()
            blocker = asyncio.ensure_future(step(9, True))  # holds the only instance
            while batcher.sequence_stats()["queued"] or not batcher.busy_instances:
                await asyncio.sleep(0.005)
            waiting = [asyncio.ensure_future(step(seq, seq > 2)) for seq in (1, 2, 3, 4)]
            while batcher.queue_depth < 4:
                await asyncio.sleep(0.005)
            gate.set()
            await blocker
            return await asyncio.gather(*waiting)

        assert asyncio.run(run()) == [4, 3, 2, 2]
        entry = core.model_statistics("history")["model_stats"][0]
        # 1, 1, 1, blocker; then sequence 1 (length 3) alone, 2 (length 2) alone, 3 and 4 (length 1) together
        assert entry["execution_count"] == 7 and entry["inference_count"] == 8
        assert [(b["batch_size"], b["compute_infer"]["count"]) for b in entry["batch_stats"]] == [(1, 6), (2, 1)]
    finally:
        gate.set()
        core.close()
        reg.clear()


def test_close_ends_the_instance_threads():
    reg = Registry()
    register_stateful(accumulate, name="acc", state=StateSpec("total", [2]), example={"x": X}, registry=reg,
                      instances=2)
    server = nbserve.Server(reg, http=False, grpc=False, metrics=False).start()
    server.infer("acc", {"x": X}, sequence_id=1, sequence_start=True)
    threads = server.core.threads()
    assert len([t for t in threads if "-seq" in t.name]) == 2
    server.stop()
    assert not any(t.is_alive() for t in threads)
    reg.clear()


class _Oracle:
    """What a running sum must answer, for any interleaving of starts, steps and ends."""

    def __init__(self) -> None:
        self.active: dict[int, float] = {}

    def expect(self, seq: int, value: float, start: bool, end: bool) -> float | str:
        if start and seq in self.active:
            return "already active"
        if not start and seq not in self.active:
            return "has not been started"
        total = (0.0 if start else self.active[seq]) + value
        if end:
            self.active.pop(seq, None)
        else:
            self.active[seq] = total
        return total


def test_any_interleaving_matches_the_oracle():
    """Random starts, steps and ends of a few ids (with mistakes) against a plain-Python oracle."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    reg = Registry()
    register_stateful(accumulate, name="acc", state=StateSpec("total", [2]), example={"x": X}, registry=reg,
                      max_batch_size=4, sequence_batching={"max_sequence_idle_microseconds": 600_000_000})
    core = InferenceCore(reg)
    core.start()
    operations = st.lists(st.tuples(st.integers(1, 4), st.integers(0, 9), st.booleans(), st.booleans()),
                          min_size=1, max_size=40)

    @settings(max_examples=60, deadline=None)
    @given(operations)
    def check(ops):
        oracle = _Oracle()
        try:
            for seq, value, start, end in ops:
                expected = oracle.expect(seq, float(value), start, end)
                try:
                    got = core.infer_sync("acc", {"x": np.full((1, 2), value, np.float32)}, sequence_id=seq,
                                          sequence_start=start, sequence_end=end).outputs["sum"][0, 0]
                except InvalidInput as exc:
                    assert isinstance(expected, str) and expected in str(exc), (expected, str(exc))
                else:
                    assert got == expected
        finally:  # leave no sequence behind for the next example
            for seq in list(oracle.active):
                core.infer_sync("acc", {"x": X}, sequence_id=seq, sequence_end=True)

    try:
        check()
    finally:
        core.close()
        reg.clear()


def test_stepper_widget_buttons_and_http_address(server):
    stepper = nbserve.SequenceStepper(server.http_address, "acc",
                                      inputs=lambda step, state: {"x": np.full((1, 2), step + 1, np.float32)})
    panel = stepper.widget()
    buttons = {b.description: b for b in panel.children[0].children}
    buttons["Step"].click()
    buttons["Step"].click()
    assert stepper.state["total"].tolist() == [[3.0, 3.0]]
    buttons["End"].click()
    assert stepper.ended and buttons["Step"].disabled
    assert "ended, 3 steps" in panel.children[2].value
    buttons["Restart"].click()
    assert not stepper.ended and stepper.history == [] and not buttons["Step"].disabled
    # a failing step shows its error in the panel instead of raising into the event loop
    stepper.inputs = [{"x": np.ones((1, 3), np.float32)}]
    buttons["Step"].click()
    assert "wrong shape" in panel.children[1].value and stepper.history == []


def test_stepper_reads_a_hidden_state_from_the_kernel():
    reg = Registry()
    register_stateful(accumulate, name="acc", state=StateSpec("total", [2]), example={"x": X}, registry=reg,
                      outputs=["sum"], expose_state=False)
    with nbserve.serve(reg, http=False, grpc=False, metrics=False) as kernel:
        stepper = nbserve.SequenceStepper(kernel, "acc", inputs=[{"x": X}, {"x": 2 * X}])
        stepper.step()
        stepper.step()
        assert list(stepper.history[-1]["outputs"]) == ["sum"]
        assert stepper.state["total"].tolist() == [3.0, 3.0]
        with pytest.raises(nbserve.errors.ServerStateError, match="no inputs for this step"):
            stepper.step()
    reg.clear()


def test_widget_free_stepper_in_process(server):
    stepper = nbserve.SequenceStepper(server, "acc", sequence_id=990)
    first = stepper.step({"x": X})
    assert first["sum"].tolist() == [[1.0, 1.0]] and stepper.state["total"].tolist() == [[1.0, 1.0]]
    stepper.step({"x": 2 * X})
    stepper.end({"x": X})
    assert [row["outputs"]["sum"][0, 0] for row in stepper.history] == [1.0, 3.0, 4.0]
    assert stepper.ended and "990" in stepper._repr_html_()
    assert stats(server, "acc")["sequence_stats"]["active"] == 0

