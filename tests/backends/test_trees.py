"""The trees backend: XGBoost, LightGBM and scikit-learn forests through Treelite, for Triton's FIL.

Every source is trained here on a tiny generated dataset, registered, run, written as a FIL model,
read back and run again; both runs must match the framework's own predictions.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("treelite")

from nbserve.backends import backend_for, trees  # noqa: E402
from nbserve.config import parse  # noqa: E402
from nbserve.errors import ExportError, SignatureError  # noqa: E402
from nbserve.registry import Registry  # noqa: E402
from nbserve.repository import read_repository, write_repository  # noqa: E402

N_FEATURES = 6


def _data(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(160, N_FEATURES)).astype(np.float32)
    if kind == "regression":
        y = x[:, 0] + 0.5 * x[:, 1] ** 2 - x[:, 2] * x[:, 3] + 0.1 * rng.normal(size=len(x))
    elif kind == "binary":
        y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    else:
        y = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.6, 0.6])
    return x, y


def _rows(n: int = 17) -> np.ndarray:
    return np.random.default_rng(42).normal(size=(n, N_FEATURES)).astype(np.float32)


@dataclasses.dataclass
class Case:
    id: str
    build: Callable[[], tuple[Any, Callable[[np.ndarray], np.ndarray]]]  # (model, its own prediction)
    framework: str
    width: int  # dims of output__0
    output_class: str
    predict_proba: str | None


# How each framework is written for FIL: model_type and file name.
WRITTEN = {
    "xgboost": ("xgboost_json", "xgboost.json"),
    "lightgbm": ("lightgbm", "model.txt"),
    "sklearn": ("treelite_checkpoint", "checkpoint.tl"),
}


def _xgb_booster_regression():
    xgb = pytest.importorskip("xgboost")
    x, y = _data("regression")
    booster = xgb.train({"objective": "reg:squarederror", "max_depth": 3}, xgb.DMatrix(x, y), num_boost_round=12)
    return booster, lambda rows: booster.predict(xgb.DMatrix(rows))


def _xgb_booster_binary():
    xgb = pytest.importorskip("xgboost")
    x, y = _data("binary")
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, y), num_boost_round=12)
    return booster, lambda rows: booster.predict(xgb.DMatrix(rows))


def _xgb_booster_softprob():
    xgb = pytest.importorskip("xgboost")
    x, y = _data("multiclass")
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3}
    booster = xgb.train(params, xgb.DMatrix(x, y), num_boost_round=8)
    return booster, lambda rows: booster.predict(xgb.DMatrix(rows))


def _xgb_booster_softmax():
    xgb = pytest.importorskip("xgboost")
    x, y = _data("multiclass")
    params = {"objective": "multi:softmax", "num_class": 3, "max_depth": 3}
    booster = xgb.train(params, xgb.DMatrix(x, y), num_boost_round=8)
    return booster, lambda rows: booster.predict(xgb.DMatrix(rows))


def _xgb_regressor():
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBRegressor(n_estimators=12, max_depth=3).fit(*_data("regression"))
    return model, model.predict


def _xgb_classifier_binary():
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBClassifier(n_estimators=12, max_depth=3).fit(*_data("binary"))
    return model, model.predict_proba


def _xgb_classifier_multiclass():
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(*_data("multiclass"))
    return model, model.predict_proba


def _lgb_booster():
    lgb = pytest.importorskip("lightgbm")
    x, y = _data("regression")
    params = {"objective": "regression", "num_leaves": 7, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=12)
    return booster, booster.predict


def _lgb_booster_multiclass():
    lgb = pytest.importorskip("lightgbm")
    x, y = _data("multiclass")
    params = {"objective": "multiclass", "num_class": 3, "num_leaves": 7, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=8)
    return booster, booster.predict


def _lgb_regressor():
    lgb = pytest.importorskip("lightgbm")
    model = lgb.LGBMRegressor(n_estimators=12, num_leaves=7, verbose=-1).fit(*_data("regression"))
    return model, model.predict


def _lgb_classifier():
    lgb = pytest.importorskip("lightgbm")
    model = lgb.LGBMClassifier(n_estimators=12, num_leaves=7, verbose=-1).fit(*_data("binary"))
    return model, model.predict_proba


def _sklearn(cls_name: str, kind: str):
    def build():
        ensemble = pytest.importorskip("sklearn.ensemble")
        model = getattr(ensemble, cls_name)(n_estimators=7, max_depth=4, random_state=0).fit(*_data(kind))
        return model, model.predict_proba if hasattr(model, "predict_proba") else model.predict

    return build


CASES = [
    Case("xgboost-booster-regression", _xgb_booster_regression, "xgboost", 1, "false", None),
    Case("xgboost-booster-binary", _xgb_booster_binary, "xgboost", 1, "false", None),
    Case("xgboost-booster-softprob", _xgb_booster_softprob, "xgboost", 3, "true", "true"),
    Case("xgboost-booster-softmax", _xgb_booster_softmax, "xgboost", 1, "true", "false"),
    Case("XGBRegressor", _xgb_regressor, "xgboost", 1, "false", None),
    Case("XGBClassifier-binary", _xgb_classifier_binary, "xgboost", 2, "true", "true"),
    Case("XGBClassifier-multiclass", _xgb_classifier_multiclass, "xgboost", 3, "true", "true"),
    Case("lightgbm-booster", _lgb_booster, "lightgbm", 1, "false", None),
    Case("lightgbm-booster-multiclass", _lgb_booster_multiclass, "lightgbm", 3, "true", "true"),
    Case("LGBMRegressor", _lgb_regressor, "lightgbm", 1, "false", None),
    Case("LGBMClassifier", _lgb_classifier, "lightgbm", 2, "true", "true"),
    Case("RandomForestRegressor", _sklearn("RandomForestRegressor", "regression"), "sklearn", 1, "false", None),
    Case("RandomForestClassifier", _sklearn("RandomForestClassifier", "multiclass"), "sklearn", 3, "true", "true"),
    Case("GradientBoostingRegressor", _sklearn("GradientBoostingRegressor", "regression"), "sklearn", 1, "false",
         None),
    Case("GradientBoostingClassifier", _sklearn("GradientBoostingClassifier", "binary"), "sklearn", 2, "true", "true"),
    Case("ExtraTreesClassifier", _sklearn("ExtraTreesClassifier", "binary"), "sklearn", 2, "true", "true"),
    Case("ExtraTreesRegressor", _sklearn("ExtraTreesRegressor", "regression"), "sklearn", 1, "false", None),
]


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    expected = np.asarray(expected, dtype=np.float32).reshape(len(expected), -1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_register_run_write_read(case: Case, tmp_path) -> None:
    obj, predict = case.build()
    assert trees.matches(obj)
    assert backend_for(obj) is trees
    registry = Registry()
    model = registry.register(obj, name="forest")

    config = model.config
    assert config.backend == "fil" and config.platform == ""
    assert config.max_batch_size == 64
    # data_type 11 is TYPE_FP32
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("input__0", 11, [N_FEATURES])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("output__0", 11, [case.width])]
    params = {k: v.string_value for k, v in config.parameters.items()}
    model_type, file_name = WRITTEN[case.framework]
    assert params["model_type"] == model_type
    assert params["output_class"] == case.output_class
    assert params.get("predict_proba") == case.predict_proba
    assert "threshold" not in params  # only binary classifiers returning class indices have one
    assert model.framework == case.framework

    rows = _rows()
    got = model.infer({"input__0": rows})["output__0"]
    assert got.shape == (len(rows), case.width)
    _close(got, predict(rows))

    repo = write_repository(tmp_path / "repo", [model])
    assert sorted(p.name for p in (repo / "forest" / "1").iterdir()) == [file_name]
    written = parse((repo / "forest" / "config.pbtxt").read_text())
    assert written.backend == "fil"
    assert {k: v.string_value for k, v in written.parameters.items()} == params
    assert [t.name for t in written.input] == ["input__0"] and [t.name for t in written.output] == ["output__0"]

    back = read_repository(repo)
    assert back.names() == ["forest"]
    again = back.get("forest")
    assert again.config.backend == "fil"
    _close(again.infer({"input__0": rows})["output__0"], predict(rows))


def test_read_back_model_writes_its_file_again(tmp_path) -> None:
    obj, predict = _xgb_booster_binary()
    model = Registry().register(obj, name="scorer")
    first = write_repository(tmp_path / "first", [model])
    back = read_repository(first)
    second = write_repository(tmp_path / "second", back)
    written = "scorer/1/xgboost.json"
    assert (second / written).read_bytes() == (first / written).read_bytes()
    assert (second / "scorer" / "config.pbtxt").read_text() == (first / "scorer" / "config.pbtxt").read_text()
    rows = _rows(5)
    _close(read_repository(second).get("scorer").infer({"input__0": rows})["output__0"], predict(rows))


def test_classifier_class_indices_with_threshold(tmp_path) -> None:
    ensemble = pytest.importorskip("sklearn.ensemble")
    x, y = _data("binary")
    clf = ensemble.RandomForestClassifier(n_estimators=9, max_depth=4, random_state=0).fit(x, y)
    model = Registry().register(clf, name="labels", predict_proba=False, threshold=0.7)
    params = {k: v.string_value for k, v in model.config.parameters.items()}
    assert params == {
        "model_type": "treelite_checkpoint", "output_class": "true", "predict_proba": "false", "threshold": "0.7",
    }
    assert list(model.config.output[0].dims) == [1]
    rows = _rows(40)
    expected = (clf.predict_proba(rows)[:, 1] > 0.7).astype(np.float32)[:, None]
    np.testing.assert_array_equal(model.infer({"input__0": rows})["output__0"], expected)
    back = read_repository(write_repository(tmp_path / "repo", [model])).get("labels")
    np.testing.assert_array_equal(back.infer({"input__0": rows})["output__0"], expected)


def test_multiclass_classifier_class_indices() -> None:
    xgb = pytest.importorskip("xgboost")
    clf = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(*_data("multiclass"))
    model = Registry().register(clf, name="labels", predict_proba=False)
    rows = _rows(30)
    got = model.infer({"input__0": rows})["output__0"]
    np.testing.assert_array_equal(got[:, 0], clf.predict(rows).astype(np.float32))


def test_renamed_tensors_run_in_the_kernel_but_fil_cannot_export_them(tmp_path) -> None:
    obj, predict = _xgb_regressor()
    model = Registry().register(obj, name="renamed", inputs=["features"], outputs=["score"])
    assert [t.name for t in model.config.input] == ["features"]
    assert [t.name for t in model.config.output] == ["score"]
    rows = _rows(4)
    _close(model.infer({"features": rows})["score"], predict(rows))
    with pytest.raises(ExportError, match="input__0"):
        write_repository(tmp_path / "repo", [model])


def test_max_batch_size_and_example() -> None:
    obj, predict = _lgb_regressor()
    registry = Registry()
    model = registry.register(obj, name="lgb", max_batch_size=256, example=_rows(3))
    assert model.config.max_batch_size == 256
    with pytest.raises(SignatureError, match="features"):
        registry.register(obj, name="lgb", example=np.zeros((2, N_FEATURES + 1), np.float32))
    unbatched = registry.register(obj, name="one", max_batch_size=0)
    row = _rows(1)[0]
    out = unbatched.infer({"input__0": row})["output__0"]
    assert out.shape == (1,)
    _close(out[None], predict(row[None]))


def test_unfitted_and_misused_options() -> None:
    ensemble = pytest.importorskip("sklearn.ensemble")
    registry = Registry()
    with pytest.raises(SignatureError, match="fit the model"):
        registry.register(ensemble.RandomForestRegressor(), name="unfitted")
    fitted = ensemble.RandomForestRegressor(n_estimators=3, random_state=0).fit(*_data("regression"))
    with pytest.raises(SignatureError, match="classifiers"):
        registry.register(fitted, name="reg", predict_proba=True)
    with pytest.raises(SignatureError, match="one input"):
        registry.register(fitted, name="reg", inputs=["a", "b"])


def test_matches_by_name_only() -> None:
    assert not trees.matches(lambda x: x)
    assert not trees.matches(np.zeros(3))
    pytest.importorskip("sklearn")
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import LinearRegression

    assert trees.matches(RandomForestRegressor())
    assert not trees.matches(LinearRegression())
    assert not trees.matches(HistGradientBoostingRegressor())


def test_importing_nbserve_imports_no_framework() -> None:
    code = (
        "import sys, numpy as np, nbserve\n"
        "from nbserve.registry import Registry\n"
        "Registry().register(lambda x: x, name='f', example=np.zeros((1, 2), 'float32'))\n"
        "import nbserve.backends.trees, nbserve.backends.transformers\n"
        "heavy = ('xgboost', 'lightgbm', 'sklearn', 'treelite', 'transformers', 'torch')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.triton
@pytest.mark.slow
def test_written_configs_are_accepted_by_real_tritonserver(tmp_path) -> None:
    """tritonserver here has no FIL backend: loading must fail for that reason only, not the config."""
    tritonserver = pytest.importorskip("nbserve._tritonserver")
    reason = tritonserver.unavailable_reason()
    if reason is not None:
        pytest.skip(f"real tritonserver unavailable: {reason}")
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    registry = Registry()
    for case in CASES:
        if case.id in ("xgboost-booster-regression", "XGBClassifier-binary", "LGBMRegressor", "RandomForestClassifier"):
            registry.register(case.build()[0], name=case.id)
    repo = write_repository(tmp_path / "repo", registry)
    with tritonserver.TritonServer(repo, model_control="explicit") as server:
        client = httpclient.InferenceServerClient(url=server.http_address)
        for name in registry.names():
            with pytest.raises(InferenceServerException, match="backend library for backend 'fil'"):
                client.load_model(name)
