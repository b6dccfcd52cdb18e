"""Native exports (onnxruntime, pytorch_libtorch, fil, tensorrt_plan) and their portable Python-backend twins.

The native configs must parse with Triton's proto and pass ``nbserve validate``; the portable ones
must answer exactly like the live models when nbserve reads them back (the same model.py that the
real tritonserver runs in tests/e2e/test_export_triton.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import nbserve
from nbserve.config import parse, render, validate as validate_config
from nbserve.export import _portable_runtime
from nbserve.export.portable import SIDECAR_FILE

from export_models import assert_same, expected, read_back_answers, register_onnx, register_torch, register_trees

FRAMEWORKS = {
    "onnx": (register_onnx, ("onnx", "onnxruntime"), {"linear": ("onnxruntime_onnx", "", "model.onnx")}),
    "torch": (register_torch, ("torch",), {"scorer": ("pytorch_libtorch", "", "model.pt")}),
    "trees": (register_trees, ("treelite", "xgboost", "lightgbm", "sklearn"),
              {"xgb_proba": ("", "fil", "xgboost.json"), "lgbm": ("", "fil", "model.txt"),
               "forest_class": ("", "fil", "checkpoint.tl")}),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request, registry):
    register, needs, models = FRAMEWORKS[request.param]
    for package in needs:
        pytest.importorskip(package)
    return register(registry), models


def test_native_configs_parse_with_tritons_proto_and_validate(framework, registry, tmp_path):
    samples, models = framework
    report = nbserve.export(tmp_path / "native", registry=registry)
    assert report.validation.ok and not report.validation.warnings, str(report.validation)
    for name, (platform, backend, model_file) in models.items():
        text = (report.path / name / "config.pbtxt").read_text()
        config = validate_config(parse(text))
        assert render(config) == text  # the file is exactly Triton's text format of the proto
        assert (config.platform, config.backend) == (platform, backend)
        assert (report.path / name / "1" / model_file).is_file()
        assert report.model(name).portable is None and not report.model(name).requirements
    assert "pip install" not in report.docker_run  # native backends need no Python packages
    # Reading the native files back in nbserve gives the kernel's answers too.
    want = expected(registry, samples)
    got = read_back_answers(report.path, samples)
    for name in samples:
        assert_same(got[name], want[name])


def test_portable_export_wraps_the_same_files_and_answers_the_same(framework, registry, tmp_path):
    samples, models = framework
    report = nbserve.export(tmp_path / "portable", registry=registry, portable=True)
    assert report.validation.ok, str(report.validation)
    for name, (platform, backend, model_file) in models.items():
        config = parse((report.path / name / "config.pbtxt").read_text())
        assert (config.platform, config.backend) == ("", "python")
        assert not config.default_model_filename
        assert not any(t.HasField("reshape") for t in (*config.input, *config.output))  # model.py reshapes
        live = registry.get(name).config
        assert config.max_batch_size == live.max_batch_size and config.dynamic_batching == live.dynamic_batching
        assert [t.name for t in config.input] == [t.name for t in live.input]
        version = report.path / name / "1"
        assert {model_file, "model.py", SIDECAR_FILE} <= {p.name for p in version.iterdir()}
        sidecar = json.loads((version / SIDECAR_FILE).read_text())
        assert sidecar["model_file"] == model_file and (sidecar["platform"], sidecar["backend"]) == (platform, backend)
        package = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "torch"}.get(platform, "treelite")
        assert any(line.startswith(f"{package}==") for line in report.model(name).requirements)
        assert report.model(name).portable == sidecar["framework"]
    want = expected(registry, samples)
    got = read_back_answers(report.path, samples)
    for name in samples:
        assert_same(got[name], want[name])


def test_portable_runtime_batches_requests_like_the_kernel(registry, tmp_path):
    """Requests merged into one batch by run_requests come back split, each equal to its own run."""
    pytest.importorskip("onnxruntime")
    samples = register_onnx(registry)
    report = nbserve.export(tmp_path / "portable", registry=registry, portable=True)
    version = report.path / "linear" / "1"
    native = json.loads((version / SIDECAR_FILE).read_text())
    runner = _portable_runtime.load_portable(native, str(version))
    from nbserve.backends._python_runtime import run_requests

    rows = samples["linear"]["x"]
    requests = [{"x": rows[:2]}, {"x": rows[2:3]}, {"x": rows[3:]}]
    for request, answer in zip(requests, run_requests(runner, requests)):
        assert_same(answer, registry.get("linear").infer(request))


def test_tensorrt_plans_are_validated_and_stay_native_in_portable_exports(tmp_path):
    """No GPU here to build a plan: a hand-written tensorrt_plan model goes through export(source=...)."""
    source = tmp_path / "source"
    (source / "engine" / "1").mkdir(parents=True)
    (source / "engine" / "config.pbtxt").write_text(
        'name: "engine"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'instance_group [ { kind: KIND_GPU count: 1 } ]\n')
    (source / "engine" / "1" / "model.plan").write_bytes(b"a serialized engine")
    report = nbserve.export(tmp_path / "out", source=source, portable=True)
    config = parse((report.path / "engine" / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and report.model("engine").portable is None
    assert any("stays a TensorRT plan" in w for w in report.warnings)
    assert any("KIND_GPU" in w for w in report.warnings) and "--gpus=all" in report.docker_run
    assert nbserve.validate(report.path).ok


def test_fil_head_matches_the_trees_backend():
    """The portable runtime's copy of FIL's output rules agrees with the trees backend's FilHead."""
    trees = pytest.importorskip("nbserve.backends.trees")
    raw_binary = np.array([[0.2], [0.7], [0.5]], np.float32)
    raw_multi = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], np.float32)
    cases = [
        ({"output_class": "false"}, 1, raw_binary),
        ({"output_class": "true", "predict_proba": "true"}, 2, raw_binary),
        ({"output_class": "true", "predict_proba": "false", "threshold": "0.6"}, 1, raw_binary),
        ({"output_class": "true", "predict_proba": "true"}, 3, raw_multi),
        ({"output_class": "true", "predict_proba": "false"}, 1, raw_multi),
    ]
    for params, width, raw in cases:
        head = trees.FilHead.from_parameters(params, width)
        portable = _portable_runtime.PortableTreeModel.__new__(_portable_runtime.PortableTreeModel)
        portable.width = width
        portable.output_class = params.get("output_class", "true") == "true"
        portable.predict_proba = params.get("predict_proba", "false") == "true"
        portable.threshold = float(params.get("threshold", "0.5"))
        np.testing.assert_array_equal(portable.finish(raw), head.finish(raw), err_msg=str(params))
