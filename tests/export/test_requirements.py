"""requirements.txt of Python-backend models: found from the callable's imports, pinned to the kernel's versions."""

from __future__ import annotations

import importlib.metadata
import sys

import cloudpickle
import numpy as np
import pytest

import nbserve
from nbserve.export.requirements import (
    Requirement,
    modules_of_callable,
    modules_of_model_dir,
    render_requirements,
    requirements_for,
)


def pinned(name: str) -> str:
    return f"{name}=={importlib.metadata.version(name).partition('+')[0]}"


def test_what_the_callable_imports_inside_uses_and_carries():
    sklearn_ensemble = pytest.importorskip("sklearn.ensemble")
    pytest.importorskip("scipy")
    forest = sklearn_ensemble.RandomForestRegressor(n_estimators=2, random_state=0).fit(np.eye(3), [0.0, 1.0, 2.0])

    def predict(x):
        import json  # the standard library is never a requirement

        from scipy import special  # imported only when called: found in the code, not the pickle

        return special.expit(forest.predict(x)) + len(json.dumps([]))

    modules = modules_of_callable(cloudpickle.dumps(predict), predict)
    names = [r.distribution for r in requirements_for(modules)]
    assert names == ["cloudpickle", "numpy", "scikit-learn", "scipy"]
    sklearn = next(r for r in requirements_for(modules) if r.distribution == "scikit-learn")
    assert sklearn.note == "import sklearn" and sklearn.version == importlib.metadata.version("scikit-learn")


def test_modules_are_found_from_the_payload_alone():
    """A repository read back has no live callable: the pickle says what it refers to."""

    def shout(text):
        return np.char.upper(text.astype(str))

    modules = modules_of_callable(cloudpickle.dumps(shout))
    assert "numpy" in modules and "cloudpickle" in {m.split(".")[0] for m in modules}


def test_local_version_labels_are_pinned_to_their_public_part():
    line = Requirement("torch", "2.3.0+cpu").line()
    assert line == "torch==2.3.0  # installed: 2.3.0+cpu"
    assert Requirement("numpy", "1.26.4").line() == "numpy==1.26.4"


def test_exported_callables_get_a_requirements_file(registry, tmp_path):
    pytest.importorskip("scipy")

    def soft(x):
        from scipy import special

        return special.softmax(x, axis=1)

    registry.register(soft, name="soft", example=np.ones((2, 3), "float32"))
    report = nbserve.export(tmp_path / "repo", registry=registry)
    text = (report.path / "soft" / "requirements.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [pinned("cloudpickle"), pinned("numpy"), pinned("scipy")]
    assert report.model("soft").requirements == lines
    assert "EXECUTION_ENV_PATH" in text and f"python={sys.version_info[0]}.{sys.version_info[1]}" in text
    assert "-r /models/soft/requirements.txt" in report.docker_run


def test_hand_written_model_py_imports(tmp_path):
    pytest.importorskip("scipy")
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "helpers.py").write_text("X = 1\n")
    (version / "model.py").write_text(
        "import os\nimport numpy as np\nimport triton_python_backend_utils as pb_utils\nimport helpers\n\n"
        "class TritonPythonModel:\n    def initialize(self, args):\n        from scipy import special\n")
    names = [r.distribution for r in requirements_for(modules_of_model_dir(tmp_path / "m"))]
    assert names == ["numpy", "scipy"]  # not os (stdlib), triton_python_backend_utils (Triton's), helpers (local)


def test_render_names_the_model_and_the_environment_recipe():
    text = render_requirements("scorer", [Requirement("numpy", "1.26.4")])
    assert text.endswith("numpy==1.26.4\n")
    assert all(line.startswith("#") for line in text.splitlines()[:-1])
    assert "conda-pack -p ./scorer-env -o scorer/python_env.tar.gz" in text
    assert '$$TRITON_MODEL_DIRECTORY/python_env.tar.gz' in text
