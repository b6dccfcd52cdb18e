"""An ONNX model as a Triton model: a ``ModelProto`` or a ``.onnx`` path; ONNX Runtime runs it in the
kernel (CUDA / TensorRT execution providers where installed) and Triton's ``onnxruntime_onnx``
platform runs the same file. A dynamic first axis named in the graph becomes Triton's batch axis.

    python examples/onnx_model.py [REPOSITORY_DIR]
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import onnx
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

import nbserve


def linear_softmax() -> onnx.ModelProto:
    """softmax(x @ W + b): 4 features in, 3 class probabilities out, any batch size."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        "linear_softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(rng.normal(size=(4, 3)).astype("float32"), "W"),
                     numpy_helper.from_array(np.zeros(3, "float32"), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def main(out: str) -> None:
    nbserve.register(linear_softmax(), name="classifier", max_batch_size=32,
                     dynamic_batching={"max_queue_delay_microseconds": 100})
    print(nbserve.get("classifier").pbtxt)

    with nbserve.serve() as server:
        client = httpclient.InferenceServerClient(server.http_address)
        x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
        request = httpclient.InferInput("x", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        probabilities = client.infer("classifier", [request]).as_numpy("probabilities")
    print("probabilities:\n", probabilities.round(3), "\nrows sum to", probabilities.sum(axis=1).round(5))

    report = nbserve.export(out)
    print(report)
    print(nbserve.validate(report.path).summary())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        main(sys.argv[1] if len(sys.argv) > 1 else f"{scratch}/model_repository")
