"""Every script in examples/ runs as a user runs it (a fresh interpreter, an output folder), prints
what it promises and leaves a valid Triton repository behind."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# script -> (modules it needs, what it must print, model folders it must export)
CASES = {
    "python_function.py": ((), ["shout: [b'SERVE MODELS!' b'FROM A NOTEBOOK!']"], ["standardize", "shout"]),
    "torch_module.py": (("torch",), ["served == mlp(x): (5, 3)", 'platform: "pytorch_libtorch"'], ["mlp"]),
    "onnx_model.py": (("onnx", "onnxruntime"), ["rows sum to [1. 1. 1.]"], ["classifier"]),
    "tree_models.py": (("treelite", "xgboost", "lightgbm", "sklearn"), ["xgboost_trees", "lightgbm_trees"],
                       ["xgboost_trees", "lightgbm_trees", "sklearn_forest"]),
    "transformers_pair.py": (("transformers", "torch", "onnxruntime"), ["logits:"],
                             ["sentiment", "sentiment_tokenizer", "sentiment_model"]),
    "readability.py": (("sklearn",), ["score:", "step 3 postprocess", "Concurrency  Infer/s"],
                       ["readability", "preprocess", "bert", "trees", "postprocess"]),
}


def run_example(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=240, cwd=cwd)


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs_and_exports(script, tmp_path):
    needs, promised, models = CASES[script]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    out = tmp_path / "repo"
    result = run_example(script, str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in promised:
        assert text in result.stdout, result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK: 0 errors"), result.stdout  # validated
    for model in models:
        assert (out / model / "config.pbtxt").is_file(), model
    assert (out / "kserve.yaml").is_file()


def test_tensorrt_example_skips_cleanly_without_a_gpu(tmp_path):
    result = run_example("tensorrt_engine.py", str(tmp_path / "repo"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    if result.stdout.startswith("skipped: "):
        assert "TensorRT needs an NVIDIA GPU" in result.stdout and not (tmp_path / "repo").exists()
    else:
        assert (tmp_path / "repo" / "scorer" / "1" / "model.plan").is_file()


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == set(CASES) | {"tensorrt_engine.py", "foundation.py"}  # foundation: tests/test_cli.py
