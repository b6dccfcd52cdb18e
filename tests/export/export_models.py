"""Tiny real models for the export tests, built here from fixed seeds (no downloads).

Each builder registers one model of one framework and returns a request for it; the tests compare
what the exported repository answers with what the registered (live) model answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IR_VERSION = 9  # what this onnxruntime reads; newer onnx writes a newer IR by default
ROWS = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)


def words(text: Any) -> Any:
    """BYTES [B, 1] -> the word count (INT32 [B, 1]) and the text upper-cased (BYTES [B, 1])."""
    items = [t.decode() if isinstance(t, bytes) else str(t) for t in np.asarray(text, dtype=object).reshape(-1)]
    counts = np.array([[len(t.split())] for t in items], dtype=np.int32)
    upper = np.array([[t.upper().encode()] for t in items], dtype=object)
    return {"count": counts, "upper": upper}


TEXT = np.array([[b"hello world"], ["gr\u00fc\u00dfe aus k\u00f6ln".encode()], [b""]], dtype=object)


def register_python(registry: Any) -> dict[str, dict[str, Any]]:
    """A BYTES model and a dynamically batching FP32 model that closes over an array."""
    weights = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)

    def affine(x):
        return np.tanh(x @ weights)

    registry.register(words, name="words", example={"text": TEXT})
    registry.register(affine, name="affine", example=ROWS, max_batch_size=16,
                      dynamic_batching={"max_queue_delay_microseconds": 20000, "preferred_batch_size": [4, 8]},
                      instances=2)
    return {"words": {"text": TEXT}, "affine": {"x": ROWS}}


def onnx_linear(batch: str | int = "N") -> Any:
    """y = relu(x @ W + b) and a per-row sum of shape [batch] (a reshape in the config)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["y"]),
        helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [batch])],
        [weights, bias, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def register_onnx(registry: Any) -> dict[str, dict[str, Any]]:
    registry.register(onnx_linear(), name="linear")
    return {"linear": {"x": ROWS}}


def register_torch(registry: Any) -> dict[str, dict[str, Any]]:
    """Named forward() arguments and a dict output: Triton's PyTorch naming rules at work."""
    import torch

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, features: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.linear(features) * scale, "total": features.sum(1)}

    scale = np.full((5, 1), 0.5, np.float32)
    registry.register(Scorer(), name="scorer", example={"features": ROWS, "scale": scale})
    return {"scorer": {"features": ROWS, "scale": scale}}


FEATURES = np.random.default_rng(4).normal(size=(160, 6)).astype(np.float32)


def register_trees(registry: Any) -> dict[str, dict[str, Any]]:
    """An XGBoost classifier (probabilities), a LightGBM regressor and a scikit-learn forest."""
    import lightgbm
    import sklearn.ensemble
    import xgboost

    x = FEATURES
    binary = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    target = x[:, 0] + 0.5 * x[:, 1] ** 2
    three = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.6, 0.6])
    registry.register(xgboost.XGBClassifier(n_estimators=6, max_depth=3).fit(x, binary), name="xgb_proba")
    registry.register(lightgbm.LGBMRegressor(n_estimators=6, num_leaves=7, verbose=-1).fit(x, target), name="lgbm")
    registry.register(sklearn.ensemble.RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0)
                      .fit(x, three), name="forest_class", predict_proba=False)
    rows = {"input__0": x[:9]}
    return {"xgb_proba": rows, "lgbm": rows, "forest_class": rows}


def register_pipeline(registry: Any) -> dict[str, dict[str, Any]]:
    """An nbserve.Ensemble of two Python steps: words -> a length score."""
    import nbserve

    if "words" not in registry:
        registry.register(words, name="words", example={"text": TEXT})
    registry.register(lambda count: (count.astype(np.float32) * 0.5 + 1.0), name="score",
                      example={"count": np.ones((2, 1), np.int32)})
    ens = (nbserve.Ensemble("pipeline", max_batch_size=64).input("text", "BYTES", [1])
           .step("words", inputs={"text": "text"}, outputs={"count": "n", "upper": "shout"})
           .step("score", inputs={"count": "n"}, outputs={"output_0": "score"})
           .output("score").output("shout"))
    registry.register(ens)
    return {"pipeline": {"text": TEXT}}


def expected(registry: Any, samples: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the live models answer."""
    return {name: registry.get(name).infer(inputs) for name, inputs in samples.items()}


def read_back_answers(repo: Any, samples: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the repository's models answer when nbserve reads it back into this process."""
    from nbserve.repository import read_repository

    back = read_repository(repo)
    try:
        return {name: back.get(name).infer(inputs) for name, inputs in samples.items()}
    finally:
        back.clear()


def assert_same(got: dict[str, Any], want: dict[str, Any], rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        value = np.asarray(value)
        result = np.asarray(got[key])
        assert result.shape == value.shape, key
        if value.dtype == object:
            assert result.reshape(-1).tolist() == value.reshape(-1).tolist(), key
        else:
            assert result.dtype == value.dtype, key
            np.testing.assert_allclose(result, value, rtol=rtol, atol=atol, err_msg=key)
