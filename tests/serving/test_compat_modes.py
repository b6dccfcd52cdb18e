"""One compatibility suite, run with the real tritonclient (HTTP and gRPC, sync and asyncio) against
both the in-kernel server and the subprocess server: every endpoint, JSON and binary data, BYTES,
all numeric data types, and errors with their status codes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

import nbserve
from nbserve.tensors import TensorSpec

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


def identity(x):
    return x


def shout(text):
    return np.array([[t.upper() for t in row] for row in text], dtype=object)


def fail(x):
    raise RuntimeError("this model always fails")


def build_registry() -> nbserve.Registry:
    reg = nbserve.Registry()
    for dtype in NUMERIC:
        reg.register(identity, name=f"id_{dtype.lower()}", inputs=[TensorSpec("x", [3], dtype)],
                     outputs=[TensorSpec("output_0", [3], dtype)], max_batch_size=8)
    reg.register(shout, example={"text": np.array([[b"a"]], dtype=object)})
    reg.register(fail, inputs=[TensorSpec("x", [2], "FP32")],
                 outputs=[TensorSpec("y", [2], "FP32")])
    return reg


@pytest.fixture(scope="module", params=["thread", "subprocess"])
def server(request):
    server = nbserve.serve(build_registry(), mode=request.param)
    yield server
    server.stop()


def sample(dtype: str, rows: int = 2) -> np.ndarray:
    if dtype == "BOOL":
        return np.array([[True, False, True]] * rows)
    np_dtype = nbserve.tensors.numpy_dtype(dtype)
    return (np.arange(rows * 3).reshape(rows, 3) % 100).astype(np_dtype)


# ----------------------------------------------------------------------------- HTTP
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_every_numeric_dtype_round_trips(server, binary):
    client = httpclient.InferenceServerClient(server.http_address)
    try:
        for dtype in NUMERIC:
            if dtype == "FP16" and not binary:
                continue  # tritonclient refuses FP16 as JSON
            x = sample(dtype)
            item = httpclient.InferInput("x", list(x.shape), dtype)
            item.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("output_0", binary_data=binary)
            result = client.infer(f"id_{dtype.lower()}", [item], outputs=[out])
            np.testing.assert_array_equal(result.as_numpy("output_0"), x)
    finally:
        client.close()


def test_http_metadata_config_stats_repository(server):
    client = httpclient.InferenceServerClient(server.http_address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["name"] == "nbserve"
        meta = client.get_model_metadata("id_fp32")
        assert meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 3]}
        assert client.get_model_config("id_fp32")["max_batch_size"] == 8
        x = sample("FP32")
        item = httpclient.InferInput("x", [2, 3], "FP32")
        item.set_data_from_numpy(x)
        client.infer("id_fp32", [item])
        stats = client.get_inference_statistics("id_fp32")["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] >= 1
        names = {m["name"] for m in client.get_model_repository_index()}
        assert {"shout", "fail", "id_fp32"} <= names
        client.unload_model("id_int8")
        assert not client.is_model_ready("id_int8")
        client.load_model("id_int8")
        assert client.is_model_ready("id_int8")
    finally:
        client.close()


def test_http_bytes_and_errors(server):
    client = httpclient.InferenceServerClient(server.http_address)
    try:
        text = np.array([[b"hello"], [b"triton"]], dtype=object)
        item = httpclient.InferInput("text", [2, 1], "BYTES")
        item.set_data_from_numpy(text)
        assert client.infer("shout", [item]).as_numpy("output_0").tolist() == [[b"HELLO"], [b"TRITON"]]

        bad = httpclient.InferInput("x", [2, 3], "FP64")
        bad.set_data_from_numpy(sample("FP64"))
        with pytest.raises(InferenceServerException, match="FP64.*cast") as info:
            client.infer("id_fp32", [bad])
        assert info.value.status() == "400"
        with pytest.raises(InferenceServerException, match="unknown model") as info:
            client.infer("nope", [bad])
        assert info.value.status() == "404"
        ok = httpclient.InferInput("x", [1, 2], "FP32")
        ok.set_data_from_numpy(np.ones((1, 2), "float32"))
        with pytest.raises(InferenceServerException, match="model 'fail'.*always fails") as info:
            client.infer("fail", [ok])
        assert info.value.status() == "500"
        # ... and it keeps serving everyone else
        assert client.infer("shout", [item]).as_numpy("output_0").shape == (2, 1)
    finally:
        client.close()


def test_http_asyncio_client(server):
    async def run():
        client = httpaio.InferenceServerClient(server.http_address)
        try:
            x = sample("INT32")
            item = httpaio.InferInput("x", [2, 3], "INT32")
            item.set_data_from_numpy(x)
            results = await asyncio.gather(*[client.infer("id_int32", [item]) for _ in range(8)])
            return [r.as_numpy("output_0") for r in results]
        finally:
            await client.close()

    for out in asyncio.run(run()):
        np.testing.assert_array_equal(out, sample("INT32"))


# ----------------------------------------------------------------------------- gRPC
def test_grpc_every_numeric_dtype_round_trips(server):
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        for dtype in NUMERIC:
            x = sample(dtype)
            item = grpcclient.InferInput("x", list(x.shape), dtype)
            item.set_data_from_numpy(x)
            result = client.infer(f"id_{dtype.lower()}", [item])
            np.testing.assert_array_equal(result.as_numpy("output_0"), x)
    finally:
        client.close()


def test_grpc_metadata_config_stats_bytes_errors(server):
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("shout")
        assert client.get_model_metadata("id_fp32").inputs[0].shape == [-1, 3]
        assert client.get_model_config("id_fp32").config.max_batch_size == 8
        text = np.array([[b"grpc"]], dtype=object)
        item = grpcclient.InferInput("text", [1, 1], "BYTES")
        item.set_data_from_numpy(text)
        assert client.infer("shout", [item]).as_numpy("output_0").tolist() == [[b"GRPC"]]
        stats = client.get_inference_statistics("shout").model_stats[0]
        assert stats.inference_stats.success.count >= 1
        assert {m.name for m in client.get_model_repository_index().models} >= {"shout", "fail"}

        bad = grpcclient.InferInput("x", [2, 4], "FP32")
        bad.set_data_from_numpy(np.ones((2, 4), "float32"))
        with pytest.raises(InferenceServerException, match="wrong shape") as info:
            client.infer("id_fp32", [bad])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as info:
            client.infer("nope", [bad])
        assert info.value.status() == "StatusCode.NOT_FOUND"
        ok = grpcclient.InferInput("x", [1, 2], "FP32")
        ok.set_data_from_numpy(np.ones((1, 2), "float32"))
        with pytest.raises(InferenceServerException, match="always fails") as info:
            client.infer("fail", [ok])
        assert info.value.status() == "StatusCode.INTERNAL"
        assert client.infer("shout", [item]).as_numpy("output_0").tolist() == [[b"GRPC"]]
    finally:
        client.close()


def test_grpc_asyncio_client(server):
    async def run():
        client = grpcaio.InferenceServerClient(server.grpc_address)
        try:
            x = sample("FP64")
            item = grpcaio.InferInput("x", [2, 3], "FP64")
            item.set_data_from_numpy(x)
            results = await asyncio.gather(*[client.infer("id_fp64", [item]) for _ in range(8)])
            return [r.as_numpy("output_0") for r in results]
        finally:
            await client.close()

    for out in asyncio.run(run()):
        np.testing.assert_array_equal(out, sample("FP64"))
