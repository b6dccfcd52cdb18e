"""Exported stateful models in the real tritonserver give exactly the kernel's outputs.

Stateful functions are registered with ``register_stateful``, served in the kernel and exported with
``write_repository``; the real tritonserver (from nvidia-pytriton, Python backend only) loads the
export and the same scripted sequences go to both through tritonclient: interleaved, concurrent
(Triton's direct strategy then pads its batches with null requests), with string and uint64 ids, an
id reused after its end, a state with an ``initial_state`` file, a hidden state, a variable-size state,
a model without batching and a per-item function over BYTES.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import numpy as np
import pytest

import nbserve
from nbserve import _tritonserver
from nbserve.registry import Registry
from nbserve.repository import write_repository
from nbserve.stateful import StateSpec, register_stateful

pytestmark = [pytest.mark.triton, pytest.mark.slow]

_reason = _tritonserver.unavailable_reason()
if _reason is not None:
    pytestmark.append(pytest.mark.skip(reason=f"real tritonserver unavailable: {_reason}"))


def running_mean(x, total, count):
    total = total + x
    count = count + 1
    return {"mean": total / count, "total": total, "count": count}


def decaying(x, h):
    h = 0.5 * h + x
    return h * 2, h  # (output, new state)


def unbatched_sum(x, acc):
    acc = acc + x.sum()
    return {"acc_out": acc.reshape(1) * 1, "acc": acc}


def history(x, seen):
    seen = np.concatenate([seen, x], axis=1)  # a variable-size state: one more value per step
    return {"length": np.full((len(x), 1), seen.shape[1], "int64"), "seen": seen}


def count_words(text, seen):
    words = len(text[0].split())
    return {"words": np.array([words], "int64"), "seen": seen + words}


def build_registry() -> Registry:
    reg = Registry()
    x = np.ones((1, 2), "float32")
    register_stateful(running_mean, name="running", registry=reg, example={"x": x}, max_batch_size=4,
                      state=[StateSpec("total", [2]), StateSpec("count", [1], "INT32", initial=10)])
    register_stateful(decaying, name="decaying", registry=reg, example={"x": x}, max_batch_size=4,
                      outputs=["y"], state=StateSpec("h", [2]), expose_state=False,
                      sequence_batching={"oldest": {"max_queue_delay_microseconds": 2000, "preferred_batch_size": [4]},
                                         "max_sequence_idle_microseconds": 10_000_000})
    # Without batching an instance holds one sequence: two instances hold two (each its own stub in Triton).
    register_stateful(unbatched_sum, name="unbatched", registry=reg, example={"x": np.ones(3)}, max_batch_size=0,
                      state=StateSpec("acc", [1], "FP64", initial=0.5), instances=2)
    register_stateful(count_words, name="words", registry=reg, batched=False, max_batch_size=4,
                      example={"text": np.array([[b"a b"]], dtype=object)},
                      state=StateSpec("seen", [1], "INT64"))
    register_stateful(history, registry=reg, example={"x": np.ones((1, 1), "float32")}, max_batch_size=4,
                      state=StateSpec("seen", [-1], "FP32", initial=np.zeros(1, "float32")),
                      sequence_batching={"oldest": {"max_queue_delay_microseconds": 2000}})
    return reg


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(nbserve in-kernel server, real tritonserver) on the same models."""
    reg = build_registry()
    repository = write_repository(tmp_path_factory.mktemp("export") / "repo", reg)
    kernel = nbserve.Server(reg, grpc=True, metrics=False).start()
    try:
        with _tritonserver.TritonServer(repository) as triton:
            yield kernel, triton
    finally:
        kernel.stop()
        reg.clear()


def _inputs(module: Any, model: str, value: float) -> list[Any]:
    if model == "unbatched":
        array = np.full(3, value, np.float64)
        name, dtype = "x", "FP64"
    elif model == "history":
        array = np.full((1, 1), value, np.float32)
        name, dtype = "x", "FP32"
    elif model == "words":
        array = np.array([[(" ".join(["w"] * int(value))).encode()]], dtype=object)
        name, dtype = "text", "BYTES"
    else:
        array = np.full((1, 2), value, np.float32)
        name, dtype = "x", "FP32"
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return [tensor]


def _step(module: Any, client: Any, model: str, seq: Any, value: float, **flags: Any) -> dict[str, np.ndarray]:
    result = client.infer(model, _inputs(module, model, value), sequence_id=seq, **flags)
    response = result.get_response()
    names = [o["name"] for o in response["outputs"]] if isinstance(response, dict) else [o.name for o in response.outputs]
    return {name: result.as_numpy(name) for name in sorted(names)}


def _script(model: str, ids: list[Any], steps: int, seed: int) -> list[tuple[Any, float, dict[str, bool]]]:
    """Interleaved steps of several sequences, each id starting and ending once."""
    rng = random.Random(seed)
    order = [seq for seq in ids for _ in range(steps)]
    rng.shuffle(order)
    done = dict.fromkeys(ids, 0)
    script = []
    for seq in order:
        k = done[seq]
        script.append((seq, float(rng.randint(1, 5)), {"sequence_start": k == 0, "sequence_end": k == steps - 1}))
        done[seq] += 1
    return script


def _run(module: Any, address: str, model: str, script: list[Any]) -> list[dict[str, np.ndarray]]:
    client = module.InferenceServerClient(address)
    try:
        return [_step(module, client, model, seq, value, **flags) for seq, value, flags in script]
    finally:
        client.close()


def _same(kernel_outputs: list[dict[str, np.ndarray]], triton_outputs: list[dict[str, np.ndarray]]) -> None:
    assert len(kernel_outputs) == len(triton_outputs)
    for step, (ours, theirs) in enumerate(zip(kernel_outputs, triton_outputs)):
        assert sorted(ours) == sorted(theirs), (step, sorted(ours), sorted(theirs))
        for name in ours:
            assert ours[name].dtype == theirs[name].dtype, (step, name)
            assert ours[name].shape == theirs[name].shape, (step, name)
            assert np.array_equal(ours[name], theirs[name]), (step, name, ours[name], theirs[name])


@pytest.mark.parametrize("model", ["running", "decaying", "unbatched", "words", "history"])
def test_interleaved_sequences_match_over_http(servers, model):
    import tritonclient.http as httpclient

    kernel, triton = servers
    ids = [1, 2**64 - 1, "text-id", 7] if model != "unbatched" else [1, "u"]
    script = _script(model, ids, steps=4, seed=len(model))
    ours = _run(httpclient, kernel.http_address, model, script)
    theirs = _run(httpclient, triton.http_address, model, script)
    _same(ours, theirs)
    if model == "running":  # the initial_state file: count starts at 10
        assert ours[0]["count"].tolist() == [[11]]


def test_interleaved_sequences_match_over_grpc(servers):
    import tritonclient.grpc as grpcclient

    kernel, triton = servers
    script = _script("running", [31, 32, "g"], steps=3, seed=3)
    _same(_run(grpcclient, kernel.grpc_address, "running", script),
          _run(grpcclient, triton.grpc_address, "running", script))


@pytest.mark.parametrize("model", ["running", "decaying", "history"])
def test_concurrent_sequences_match(servers, model):
    """Four sequences step at once from four clients: batched in both servers (Triton's direct
    strategy pads its batches with null requests), every sequence keeps its own state."""
    import tritonclient.http as httpclient

    kernel, triton = servers

    def run_all(address: str) -> dict[Any, list[dict[str, np.ndarray]]]:
        results: dict[Any, list[dict[str, np.ndarray]]] = {}
        errors: list[BaseException] = []

        def one(seq: Any) -> None:
            try:
                script = [(seq, float(k % 3 + 1), {"sequence_start": k == 0, "sequence_end": k == 5}) for k in range(6)]
                results[seq] = _run(httpclient, address, model, script)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(seq,)) for seq in (41, 42, "c", 44)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, f"{address}: {errors[0]}"
        return results

    ours, theirs = run_all(kernel.http_address), run_all(triton.http_address)
    assert sorted(map(str, ours)) == sorted(map(str, theirs))
    for seq in ours:
        _same(ours[seq], theirs[seq])


def test_an_id_reused_after_its_end_starts_fresh_in_both(servers):
    import tritonclient.http as httpclient

    kernel, triton = servers
    script = [(5, 2.0, {"sequence_start": True}), (5, 3.0, {"sequence_end": True}),
              (5, 4.0, {"sequence_start": True}), (5, 1.0, {"sequence_end": True})]
    ours = _run(httpclient, kernel.http_address, "running", script)
    _same(ours, _run(httpclient, triton.http_address, "running", script))
    assert [o["total"][0, 0] for o in ours] == [2.0, 5.0, 4.0, 5.0]


def test_both_refuse_a_sequence_that_was_not_started(servers):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    for address, words in ((servers[0].http_address, "has not been started"),
                           (servers[1].http_address, "must specify the START flag")):
        client = httpclient.InferenceServerClient(address)
        with pytest.raises(InferenceServerException, match=words) as info:
            _step(httpclient, client, "running", 987654, 1.0)
        assert info.value.status() == "400"


def test_the_exported_config_keeps_the_sequence_batching_section(servers):
    import tritonclient.http as httpclient

    kernel, triton = servers
    ours = httpclient.InferenceServerClient(kernel.http_address).get_model_config("running")
    theirs = httpclient.InferenceServerClient(triton.http_address).get_model_config("running")
    for config in (ours, theirs):
        sb = config["sequence_batching"]
        assert [(s["input_name"], s["output_name"]) for s in sb["state"]] == [("total", "total"), ("count", "count")]
        assert sorted(c["name"] for c in sb["control_input"]) == ["END", "START"]
    assert theirs["sequence_batching"]["state"][1]["initial_state"][0]["data_file"] == "count.bin"


def test_the_stepper_watches_a_sequence_in_triton(servers):
    triton = servers[1]
    stepper = nbserve.SequenceStepper(triton.http_address, "running", sequence_id="stepper")
    x = np.full((1, 2), 2.0, np.float32)
    stepper.step({"x": x})
    stepper.end({"x": x})
    assert stepper.state["total"].tolist() == [[4.0, 4.0]] and stepper.state["count"].tolist() == [[12]]
    assert [row["start"] for row in stepper.history] == [True, False] and stepper.ended
