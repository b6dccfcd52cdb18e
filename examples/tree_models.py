"""Tree ensembles as Triton models: XGBoost, LightGBM and scikit-learn forests run through Treelite in
the kernel and are written for Triton's FIL backend (``xgboost.json``, ``model.txt`` or a Treelite
checkpoint). Each library that is installed is used; the others are skipped.

    python examples/tree_models.py [REPOSITORY_DIR]
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile

import numpy as np
import tritonclient.http as httpclient

import nbserve


def training_data(n: int = 300):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, 0] * 2 - x[:, 1] + 0.1 * rng.normal(size=n)).astype("float32")


def trained_models() -> dict:
    x, y = training_data()
    models = {}
    if importlib.util.find_spec("xgboost"):
        import xgboost

        models["xgboost_trees"] = xgboost.train({"max_depth": 3, "eta": 0.3, "nthread": 1},
                                                xgboost.DMatrix(x, label=y), num_boost_round=20)
    if importlib.util.find_spec("lightgbm"):
        import lightgbm

        models["lightgbm_trees"] = lightgbm.train({"num_leaves": 8, "verbose": -1, "num_threads": 1},
                                                  lightgbm.Dataset(x, label=y), num_boost_round=20)
    if importlib.util.find_spec("sklearn"):
        from sklearn.ensemble import RandomForestRegressor

        models["sklearn_forest"] = RandomForestRegressor(n_estimators=20, max_depth=5, random_state=0).fit(x, y)
    return models


def main(out: str) -> None:
    models = trained_models()
    for name, model in models.items():
        nbserve.register(model, name=name, max_batch_size=256, dynamic_batching={"max_queue_delay_microseconds": 200})
    print(nbserve.models(), end="\n\n")

    x = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    with nbserve.serve() as server:
        client = httpclient.InferenceServerClient(server.http_address)
        for name in models:
            request = httpclient.InferInput(nbserve.get(name).inputs[0].name, list(x.shape), "FP32")
            request.set_data_from_numpy(x)
            output = nbserve.get(name).outputs[0].name
            print(f"{name:<15}", client.infer(name, [request]).as_numpy(output).ravel().round(3),
                  " target:", (x[:, 0] * 2 - x[:, 1]).round(3))

    report = nbserve.export(out)
    print(report)
    print(nbserve.validate(report.path).summary())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        main(sys.argv[1] if len(sys.argv) > 1 else f"{scratch}/model_repository")
