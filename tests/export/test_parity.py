"""nbserve.parity: the same requests to the kernel and to the exported repository served in a subprocess.

The real tritonserver side runs in tests/e2e/test_export_triton.py; here ``triton=False`` keeps these
tests to nbserve's own processes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nbserve
from nbserve.errors import ConfigError
from nbserve.export.parity import ParityReport, compare, load_samples, synthesize_samples

from export_models import ROWS, TEXT, register_python

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_an_export_answers_like_the_kernel(registry, tmp_path):
    samples = register_python(registry)
    report_export = nbserve.export(tmp_path / "repo", registry=registry)
    samples["affine"] = [{"x": ROWS[:2]}, {"x": ROWS[2:]}]  # several requests per model
    report = nbserve.parity(report_export.path, samples, registry=registry, triton=False, repeats=2)
    assert isinstance(report, ParityReport) and report.ok, repr(report)
    assert report.reference == {"words": "kernel", "affine": "kernel"}
    assert [(r.model, r.output, r.target) for r in report.rows] == [
        ("words", "count", "subprocess"), ("words", "upper", "subprocess"), ("affine", "output_0", "subprocess")]
    assert report.row("affine", "output_0", "subprocess").max_abs < 1e-6
    assert report.row("words", "upper", "subprocess").max_abs == 0.0
    assert set(report.latency_ms["affine"]) == {"kernel", "subprocess"}
    assert all(v > 0 for v in report.latency_ms["affine"].values())
    assert report.skipped == {"triton": "not requested (triton=False)"}
    text = repr(report)
    assert "(agree;" in text and "subprocess max abs" in text and "not compared: triton" in text
    assert "<table>" in report._repr_html_()


def test_a_changed_model_is_caught(registry, tmp_path):
    registry.register(lambda x: x * 2, name="double", example=np.ones((2, 3), "float32"))
    repo = nbserve.export(tmp_path / "repo", registry=registry).path
    registry.register(lambda x: x * 2 + 0.5, name="double", example=np.ones((2, 3), "float32"))  # edited since
    report = nbserve.parity(repo, {"double": {"x": np.ones((2, 3), "float32")}}, registry=registry, triton=False,
                            repeats=1)
    row = report.row("double", "output_0", "subprocess")
    assert not report.ok and not row.ok
    assert row.max_abs == pytest.approx(0.5) and row.max_rel == pytest.approx(0.5 / 2.5)
    assert "DIFFER" in repr(report) and "0.5 !" in repr(report)


def test_models_missing_from_the_kernel_are_compared_with_the_repository_read_here(registry, tmp_path):
    registry.register(lambda x: x - 1, name="dec", example=np.ones((2, 3), "float32"))
    repo = nbserve.export(tmp_path / "repo", registry=registry).path
    report = nbserve.parity(repo, registry=nbserve.Registry(), triton=False, repeats=1)  # samples from the config
    assert report.ok and report.reference == {"dec": "repository"}
    with pytest.raises(ConfigError, match="not in the repository"):
        nbserve.parity(repo, {"inc": {"x": ROWS}}, registry=registry, triton=False)


def test_compare_handles_shapes_dtypes_and_bytes():
    a = np.array([[1.0, 2.0]], np.float32)
    assert compare(a, a, 1e-5, 1e-6) == (0.0, 0.0, True, "")
    assert compare(a.astype(np.float64), a, 1e-5, 1e-6)[2:] == (False, "dtype float64 instead of float32")
    max_abs, _, ok, note = compare(a[:, :1], a, 1e-5, 1e-6)
    assert math.isnan(max_abs) and not ok and note == "shape [1, 1] instead of [1, 2]"
    assert compare(TEXT, TEXT.copy(), 0, 0)[2] is True
    assert compare(TEXT[::-1], TEXT, 0, 0)[2:] == (False, "BYTES values differ")


def test_synthesized_samples_follow_the_config():
    from nbserve.config import build_config

    config = build_config(name="m", inputs=[("t", [1], "BYTES"), ("n", [-1], "INT64")],
                          outputs=[("y", [1], "FP32")], max_batch_size=4)
    sample = synthesize_samples(config)
    assert sample["t"].shape == (2, 1) and sample["t"].dtype == object and sample["t"][0, 0] == b"sample text 0"
    assert sample["n"].shape == (2, 3) and sample["n"].dtype == np.int64


def test_samples_from_files(registry, tmp_path):
    register_python(registry)
    repo = nbserve.export(tmp_path / "repo", registry=registry).path
    (tmp_path / "s.json").write_text(json.dumps({"affine": {"x": ROWS[:1].tolist()}, "words": {"text": [["a b"]]}}))
    loaded = load_samples(tmp_path / "s.json", repo)
    assert loaded["affine"]["x"].dtype == np.float32 and loaded["words"]["text"].tolist() == [[b"a b"]]
    np.savez(tmp_path / "s.npz", **{"affine/x": ROWS[:2]})
    assert load_samples(tmp_path / "s.npz", repo)["affine"]["x"].shape == (2, 4)
    with pytest.raises(ConfigError, match="input the model does not have"):
        (tmp_path / "bad.json").write_text(json.dumps({"affine": {"y": [[1]]}}))
        load_samples(tmp_path / "bad.json", repo)


def test_cli_parity(registry, tmp_path):
    registry.register(lambda x: x * 3, name="triple", example=np.ones((2, 3), "float32"))
    repo = nbserve.export(tmp_path / "repo", registry=registry).path
    done = subprocess.run([sys.executable, "-m", "nbserve.cli", "parity", str(repo), "--no-triton", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(agree;" in done.stdout and "triple" in done.stdout
