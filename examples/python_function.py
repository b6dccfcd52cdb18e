"""A plain Python / NumPy function as a Triton model: register, serve, call with tritonclient, export.

    python examples/python_function.py [REPOSITORY_DIR]

Batched functions take the whole batch (first axis); ``batched=False`` functions take one item at a
time. Text becomes Triton ``BYTES``. On disk both are Python-backend models (``model.py`` + the
function pickled by value), so they run in any tritonserver.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import tritonclient.http as httpclient

import nbserve


def standardize(x):
    """Batched: each row to mean 0 and standard deviation 1."""
    return (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)


def shout(text):
    """One item at a time: BYTES in, BYTES out."""
    return np.array([text[0].decode().upper().encode() + b"!"], dtype=object)


def main(out: str) -> None:
    nbserve.register(standardize, example=np.random.rand(4, 8).astype("float32"), max_batch_size=64,
                     dynamic_batching={"max_queue_delay_microseconds": 100})
    nbserve.register(shout, example=np.array([["hello"], ["notebook"]]), batched=False, outputs=["loud"])
    print(nbserve.models(), end="\n\n")

    with nbserve.serve() as server:
        client = httpclient.InferenceServerClient(server.http_address)
        x = np.arange(16, dtype="float32").reshape(2, 8)
        request = httpclient.InferInput("x", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        print("standardize:", client.infer("standardize", [request]).as_numpy("output_0").round(2)[0])
        text = np.array([[b"serve models"], [b"from a notebook"]], dtype=object)
        request = httpclient.InferInput("text", list(text.shape), "BYTES")
        request.set_data_from_numpy(text)
        print("shout:", client.infer("shout", [request]).as_numpy("loud").ravel())

    report = nbserve.export(out)
    print(report)
    print(nbserve.validate(report.path).summary())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        main(sys.argv[1] if len(sys.argv) > 1 else f"{scratch}/model_repository")
