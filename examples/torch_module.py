"""A PyTorch module as a Triton model: the signature comes from an example batch; in the kernel the
live module runs under ``torch.inference_mode()``; on disk it is TorchScript (``model.pt``) for
Triton's PyTorch backend, or a Python-backend model with ``--portable``.

    python examples/torch_module.py [REPOSITORY_DIR] [--portable]
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
import tritonclient.http as httpclient

import nbserve


def main(out: str, portable: bool) -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)).eval()
    nbserve.register(mlp, name="mlp", example=torch.randn(4, 8), max_batch_size=64, instances=2,
                     dynamic_batching={"max_queue_delay_microseconds": 100, "preferred_batch_size": [16, 32]})
    print(nbserve.get("mlp").pbtxt)

    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    with nbserve.serve() as server:
        client = httpclient.InferenceServerClient(server.http_address)
        request = httpclient.InferInput("input", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        served = client.infer("mlp", [request]).as_numpy("output__0")
    with torch.inference_mode():
        np.testing.assert_allclose(served, mlp(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    print("served == mlp(x):", served.shape)

    report = nbserve.export(out, portable=portable)
    print(report)
    print(nbserve.validate(report.path).summary())


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    with tempfile.TemporaryDirectory() as scratch:
        main(args[0] if args else f"{scratch}/model_repository", portable="--portable" in sys.argv)
