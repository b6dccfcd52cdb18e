"""nbserve.export in the real tritonserver: export, start Triton on the result, call it with tritonclient,
and compare with the models in the kernel.

The tritonserver here is nvidia-pytriton's build of Triton 2.51, which ships the Python backend only:

* served and compared: Python models (a BYTES model, a dynamically batching model), an ensemble of
  Python steps, the portable export of ONNX, TorchScript and tree models (XGBoost, LightGBM,
  scikit-learn), and the readability pipeline of DESIGN.md (Python, torch and forest steps in an
  ensemble);
* native configs (onnxruntime_onnx, pytorch_libtorch, fil): loading them must fail only because the
  backend library is missing, never on the config;
* ``nbserve validate``: the broken repositories of tests/export that this build can judge are refused
  (or loaded, for the warnings) as validate says.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import nbserve
from nbserve import _tritonserver
from nbserve.registry import Registry

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(900)]

_reason = _tritonserver.unavailable_reason()
if _reason is not None:
    pytestmark.append(pytest.mark.skip(reason=f"real tritonserver unavailable: {_reason}"))


def _load(path: Path, name: str):
    """A helper module of the test suite (tests/export has no package), or the readability example."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


models = _load(ROOT / "tests" / "export" / "export_models.py", "export_models")
broken = _load(ROOT / "tests" / "export" / "broken_repositories.py", "broken_repositories")


def _needs(*packages: str) -> None:
    for package in packages:
        pytest.importorskip(package)


@pytest.fixture(scope="module")
def kernel():
    """The notebook's registry: every kind of model the issue names, plus the readability pipeline."""
    _needs("onnxruntime", "torch", "treelite", "xgboost", "lightgbm", "sklearn")
    registry = Registry()
    samples = {}
    samples.update(models.register_python(registry))
    samples.update(models.register_pipeline(registry))
    samples.update(models.register_onnx(registry))
    samples.update(models.register_torch(registry))
    samples.update(models.register_trees(registry))
    readability = _load(ROOT / "examples" / "readability.py", "nbserve_example_readability")
    readability.register_models(registry)
    registry.register(readability.build_ensemble())
    text = np.array([[b"The cat sat on the mat."], [b"Bureaucratic documentation is extraordinarily dense."]],
                    dtype=object)
    samples["readability"] = {"text": text, "weight": np.full((2, 1), 0.7, np.float32)}
    yield registry, samples
    registry.clear()


@pytest.fixture(scope="module")
def portable(kernel, tmp_path_factory):
    registry, _ = kernel
    report = nbserve.export(tmp_path_factory.mktemp("export") / "repo", registry=registry, portable=True)
    assert report.validation.ok, str(report.validation)
    return report


@pytest.fixture(scope="module")
def triton(portable):
    server = _tritonserver.TritonServer(portable.path).start(timeout_s=600)
    yield server
    server.stop()


def _http_infer(server, model, inputs):
    import tritonclient.http as httpclient

    from nbserve.serving.remote import http_infer

    client = httpclient.InferenceServerClient(url=server.http_address, network_timeout=300)
    try:
        return http_infer(client, model, inputs)
    finally:
        client.close()


def _grpc_infer(server, model, inputs):
    import tritonclient.grpc as grpcclient

    from nbserve.tensors import triton_dtype

    client = grpcclient.InferenceServerClient(url=server.grpc_address)
    try:
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), triton_dtype(array))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = client.infer(model, tensors, client_timeout=300)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    finally:
        client.close()


# ----------------------------------------------------------------------------- the exported models in Triton
def test_every_exported_model_is_ready_in_triton(triton, portable):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=triton.http_address)
    for name in portable.names:
        assert client.is_model_ready(name), name
    config = client.get_model_config("affine")
    assert config["max_batch_size"] == 16 and config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["instance_group"][0]["count"] == 2 and config["instance_group"][0]["kind"] == "KIND_CPU"


def test_python_model_with_a_bytes_input(triton, kernel):
    registry, samples = kernel
    want = registry.get("words").infer(samples["words"])
    models.assert_same(_http_infer(triton, "words", samples["words"]), want)
    models.assert_same(_grpc_infer(triton, "words", samples["words"]), want)


def test_python_model_batches_dynamically_in_triton(triton, kernel):
    import tritonclient.http as httpclient

    registry, _ = kernel
    rows = [models.ROWS[i % 5: i % 5 + 1] * (1 + i) for i in range(16)]
    client = httpclient.InferenceServerClient(url=triton.http_address, concurrency=16, network_timeout=300)
    try:
        before = client.get_inference_statistics("affine")["model_stats"][0]
        pending = []
        for row in rows:
            tensor = httpclient.InferInput("x", list(row.shape), "FP32")
            tensor.set_data_from_numpy(row)
            pending.append(client.async_infer("affine", [tensor]))
        for row, request in zip(rows, pending):
            want = registry.get("affine").infer({"x": row})["output_0"]
            # Batched and single-row matrix products round differently in the last bit.
            np.testing.assert_allclose(request.get_result().as_numpy("output_0"), want, rtol=1e-5, atol=1e-6)
        after = client.get_inference_statistics("affine")["model_stats"][0]
    finally:
        client.close()
    assert after["inference_count"] - before["inference_count"] == 16
    # 16 requests in flight against a 20 ms batching window: Triton merged them into fewer executions.
    assert after["execution_count"] - before["execution_count"] < 16


def test_ensemble_of_python_steps(triton, kernel):
    registry, samples = kernel
    want = registry.get("pipeline").infer(samples["pipeline"])
    models.assert_same(_http_infer(triton, "pipeline", samples["pipeline"]), want)


@pytest.mark.parametrize("name", ["linear", "scorer", "xgb_proba", "lgbm", "forest_class"])
def test_portable_onnx_torch_and_tree_models(triton, kernel, portable, name):
    registry, samples = kernel
    assert portable.model(name).portable in ("onnxruntime", "pytorch", "fil")
    models.assert_same(_http_infer(triton, name, samples[name]), registry.get(name).infer(samples[name]))


def test_the_readability_pipeline_of_the_design(triton, kernel, portable):
    registry, samples = kernel
    assert portable.model("bert").portable == "pytorch" and portable.model("trees").portable == "fil"
    want = registry.get("readability").infer(samples["readability"])
    got = _http_infer(triton, "readability", samples["readability"])
    models.assert_same(got, want, rtol=1e-5, atol=1e-5)


def test_readme_examples_run_against_triton(triton, portable, capsys):
    readme = (portable.path / "README.md").read_text()
    scripts = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(scripts) == len(portable.names)
    for script in scripts:
        exec(compile(script.replace("localhost:8000", triton.http_address), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "score [[" in printed and "output__0 [[" in printed


def test_parity_with_triton(kernel, portable):
    registry, samples = kernel
    chosen = {name: samples[name] for name in ("words", "linear", "pipeline")}
    report = nbserve.parity(portable.path, chosen, registry=registry, triton=True, repeats=1, timeout_s=600)
    assert report.ok, repr(report)
    assert report.targets() == ["subprocess", "triton"]
    assert {r.model for r in report.rows if r.target == "triton"} == set(chosen)
    assert all("triton" in report.latency_ms[name] for name in chosen)


# ----------------------------------------------------------------------------- native configs
def test_native_configs_fail_only_for_the_missing_backend(kernel, tmp_path):
    """This Triton has no onnxruntime, pytorch or fil backend: the load must get past the config."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    registry, _ = kernel
    report = nbserve.export(tmp_path / "native", ["linear", "scorer", "xgb_proba", "words"], registry=registry)
    assert report.validation.ok
    server = _tritonserver.TritonServer(report.path, model_control="explicit").start(timeout_s=600)
    try:
        client = httpclient.InferenceServerClient(url=server.http_address, network_timeout=300)
        client.load_model("words")  # a Python model next to them loads
        for name, backend in (("linear", "onnxruntime"), ("scorer", "pytorch"), ("xgb_proba", "fil")):
            with pytest.raises(InferenceServerException) as caught:
                client.load_model(name)
            assert f"unable to find backend library for backend '{backend}'" in caught.value.message()
        client.close()
    finally:
        server.stop()


# ----------------------------------------------------------------------------- validate against Triton
def test_tritonserver_agrees_with_validate_on_the_broken_repositories(tmp_path):
    """One server, every judgeable case under its own prefix: refused exactly where validate says error."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    judged = [(f"c{i:02d}_", case) for i, case in enumerate(broken.CASES) if case.triton is not None]
    assert sum(case.triton for _, case in judged) >= 15
    root = tmp_path / "repo"
    for prefix, case in judged:
        assert all(isinstance(text, str) for text in case.files.values())
        for relative, text in broken.renamed(case, prefix).items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text(text)
    server = _tritonserver.TritonServer(root, model_control="explicit").start(timeout_s=600)
    outcome = {}
    try:
        client = httpclient.InferenceServerClient(url=server.http_address, network_timeout=300)
        for prefix, case in judged:
            try:
                client.load_model(f"{prefix}broken")
                outcome[case.id] = False
            except InferenceServerException:
                outcome[case.id] = True
        client.close()
    finally:
        server.stop()
    assert outcome == {case.id: case.triton for _, case in judged}
    for _, case in judged:  # and validate's severity says the same thing
        assert (case.severity == "error") == case.triton, case.id
