"""The Triton repository on disk: writing registered models, reading them (and hand-written ones) back."""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from nbserve.config import parse, render
from nbserve.errors import ConfigError, ExportError
from nbserve.registry import ModelVersion, Registry
from nbserve.repository import MARKER_FILE, model_versions_to_load, read_repository, write_repository

X = np.arange(6, dtype=np.float32).reshape(2, 3)
TEXT = np.array([[b"hello"], ["wörld".encode()], [b""]], dtype=object)


def scale(x):
    return {"y": x * 3, "total": x.sum(axis=1, keepdims=True)}


def text_stats(text):
    lengths = np.array([[len(t)] for t in text.reshape(-1)], dtype=np.int32)
    upper = np.array([[t.upper()] for t in text.reshape(-1)], dtype=object)
    return lengths, upper


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ----------------------------------------------------------------------------- round trip
def test_python_models_round_trip(registry, tmp_path):
    registry.register(scale, example=X, max_batch_size=8, dynamic_batching={"max_queue_delay_microseconds": 100})
    registry.register(text_stats, example=TEXT, outputs=["length", "upper"])
    registry.register(lambda x: x - 1, name="unbatched", example=X, max_batch_size=0)
    repo = write_repository(tmp_path / "repo", registry)

    assert repo == tmp_path / "repo"
    assert (repo / MARKER_FILE).is_file()
    for name in ("scale", "text_stats", "unbatched"):
        assert {"config.pbtxt", "1", "1/model.py", "1/callable.pkl", "1/signature.json"} <= set(files_under(repo / name))
        text = (repo / name / "config.pbtxt").read_text()
        assert 'backend: "python"' in text
        assert parse(text).name == name
    assert "data_type: TYPE_STRING" in (repo / "text_stats" / "config.pbtxt").read_text()

    back = read_repository(repo)
    assert back.names() == ["scale", "text_stats", "unbatched"]
    for name in back.names():
        original, loaded = registry.get(name), back.get(name)
        assert loaded.inputs == original.inputs and loaded.outputs == original.outputs
        assert loaded.config.max_batch_size == original.config.max_batch_size
        assert loaded.config.dynamic_batching == original.config.dynamic_batching
        assert loaded.latest.obj is None  # read from files, not the live object
    out = back.get("scale").infer({"x": X})
    np.testing.assert_array_equal(out["y"], X * 3)
    np.testing.assert_array_equal(out["total"], X.sum(axis=1, keepdims=True))
    stats = back.get("text_stats").infer({"text": TEXT})
    assert stats["length"].tolist() == [[5], [6], [0]]
    assert stats["upper"].tolist() == [[b"HELLO"], ["WöRLD".encode()], [b""]]
    assert back.get("unbatched").infer({"x": X})["output_0"].tolist() == (X - 1).tolist()


def test_read_into_an_existing_registry_and_select_models(registry, tmp_path):
    registry.register(scale, example=X)
    registry.register(text_stats, example=TEXT)
    repo = write_repository(tmp_path / "repo", registry)
    target = Registry()
    assert read_repository(repo, target, models=["text_stats"]) is target
    assert target.names() == ["text_stats"]


def test_versions_are_written_in_their_folders(registry, tmp_path):
    for k in (1, 2, 3):
        registry.register(lambda x, k=k: x + k, name="m", inputs=["x"], example={"x": X})
    repo = write_repository(tmp_path / "repo", registry)
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "3", "config.pbtxt"]
    back = read_repository(repo)
    assert sorted(back.get("m").versions) == [3]  # Triton's default policy: the latest one


@pytest.mark.parametrize(
    ("policy", "loaded"),
    [(None, [3]), ("latest", [3]), (2, [2, 3]), ("all", [1, 2, 3]), ([1, 3], [1, 3]), ([2, 9], [2])],
    ids=str,
)
def test_version_policy_on_read(registry, tmp_path, policy, loaded):
    for k in (1, 2, 3):
        options = {"version_policy": policy} if policy is not None and k == 3 else {}
        registry.register(lambda x, k=k: x + k, name="m", inputs=["x"], example={"x": X}, **options)
    back = read_repository(write_repository(tmp_path / "repo", registry))
    model = back.get("m")
    assert sorted(model.versions) == loaded
    for version in loaded:
        assert model.infer({"x": X}, version=version)["output_0"][0, 0] == version


def test_version_folders_follow_tritons_rules(registry, tmp_path):
    registry.register(lambda x: x + 1, name="m", example=X, version_policy="all")
    repo = write_repository(tmp_path / "repo", registry)
    (repo / "m" / "1").rename(repo / "m" / "7")
    for ignored in ("0", "01", "latest", "٣"):  # Triton ignores these: not a number, or starting with 0
        (repo / "m" / ignored).mkdir()
    assert sorted(read_repository(repo).get("m").versions) == [7]


def test_a_policy_that_selects_no_version_is_refused(registry, tmp_path):
    registry.register(lambda x: x + 1, name="m", example=X, version_policy=[4, 5])
    repo = write_repository(tmp_path / "repo", registry)
    with pytest.raises(ConfigError) as info:
        read_repository(repo)
    message = str(info.value)
    assert "no version folder matches the version_policy" in message and "version folders [1]" in message
    assert "versions: 4" in message and str(repo / "m" / "config.pbtxt") in message


def test_model_versions_to_load():
    cfg = parse('name: "m"')
    assert model_versions_to_load(cfg, [3, 1, 10]) == [10]
    cfg = parse('name: "m" version_policy { latest { num_versions: 2 } }')
    assert model_versions_to_load(cfg, [3, 1, 10]) == [3, 10]
    cfg = parse('name: "m" version_policy { all { } }')
    assert model_versions_to_load(cfg, [3, 1, 10]) == [1, 3, 10]
    cfg = parse('name: "m" version_policy { specific { versions: [1, 4] } }')
    assert model_versions_to_load(cfg, [3, 1, 10]) == [1]


# ----------------------------------------------------------------------------- safety
def test_a_failing_writer_leaves_nothing_behind(registry, tmp_path):
    lock = threading.Lock()

    def guarded(x):
        with lock:
            return x

    registry.register(scale, example=X)
    registry.register(guarded, example=X)  # a closure over a lock: cloudpickle cannot pickle it
    with pytest.raises(ExportError) as info:
        write_repository(tmp_path / "repo", registry)
    message = str(info.value)
    assert "model 'guarded'" in message and "cannot pickle" in message
    assert "Fix: create locks" in message
    assert os.listdir(tmp_path) == []  # no repository, no temporary directory


def test_a_failing_rewrite_keeps_the_old_repository(registry, tmp_path):
    registry.register(scale, example=X)
    repo = write_repository(tmp_path / "repo", registry)
    before = files_under(repo)
    lock = threading.Lock()
    registry.register(lambda x: (lock, x)[1], name="guarded", example=X)
    with pytest.raises(ExportError):
        write_repository(repo, registry)
    assert files_under(repo) == before
    assert os.listdir(tmp_path) == ["repo"]


def test_rewrites_its_own_repository_but_nothing_else(registry, tmp_path):
    registry.register(scale, example=X)
    repo = write_repository(tmp_path / "repo", registry)
    (repo / "scale" / "stale.txt").write_text("from an older export")
    registry.register(text_stats, example=TEXT)
    write_repository(repo, registry)  # nbserve wrote it: replaced without asking
    assert sorted(p.name for p in repo.iterdir()) == [MARKER_FILE, "scale", "text_stats"]
    assert not (repo / "scale" / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["repo"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(ExportError) as info:
        write_repository(foreign, registry)
    assert "not written by nbserve" in str(info.value) and "overwrite=True" in str(info.value)
    assert (foreign / "notes.txt").read_text() == "precious"

    write_repository(foreign, registry, overwrite=True)
    assert sorted(p.name for p in foreign.iterdir()) == [MARKER_FILE, "scale", "text_stats"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ExportError, match="Fix: choose a"):
        write_repository(a_file, registry, overwrite=True)


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/../../b", "..", "sub/dir"])
def test_model_names_cannot_escape_the_repository(registry, tmp_path, name):
    model = registry.register(scale, example=X).latest
    # Bypass register's own check, as a hand-built ModelVersion could.
    forged = ModelVersion(name=name, version=1, config=model.config, runner=model.runner, framework="python",
                          backend="python", obj=scale, options=model.options)
    inside = tmp_path / "inside"
    inside.mkdir()
    with pytest.raises(ConfigError, match="Fix: use name="):
        write_repository(inside / "repo", [forged])
    assert os.listdir(inside) == []
    assert sorted(os.listdir(tmp_path)) == ["inside"]


def test_writing_something_else_is_refused(tmp_path):
    with pytest.raises(ExportError, match="cannot write str.*Fix: pass registered models"):
        write_repository(tmp_path / "repo", ["scale"])
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- reading errors
def _python_model_dir(root: Path, name: str, config: str | None, versions=("1",)) -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for version in versions:
        (model_dir / version).mkdir()
    return model_dir


CONFIG = 'name: "{name}" backend: "python" output {{ name: "y" data_type: TYPE_FP32 dims: [1] }}'


def test_missing_repository(tmp_path):
    with pytest.raises(ConfigError, match="repository not found.*Fix: pass the repository directory"):
        read_repository(tmp_path / "nowhere")


def test_missing_config_names_the_folder(tmp_path):
    model_dir = _python_model_dir(tmp_path, "m", None)
    with pytest.raises(ConfigError) as info:
        read_repository(tmp_path)
    message = str(info.value)
    assert "no config.pbtxt" in message and str(model_dir) in message and "Fix: write config.pbtxt" in message


def test_missing_version_folder_names_it(tmp_path):
    model_dir = _python_model_dir(tmp_path, "m", CONFIG.format(name="m"), versions=())
    (model_dir / "latest").mkdir()  # not a version: versions are numbers
    with pytest.raises(ConfigError) as info:
        read_repository(tmp_path)
    message = str(info.value)
    assert "no version folder" in message and f"{model_dir}/1/" in message and "Fix: create a numeric" in message


def test_name_mismatch_names_the_file(tmp_path):
    model_dir = _python_model_dir(tmp_path, "folder", CONFIG.format(name="other"))
    with pytest.raises(ConfigError) as info:
        read_repository(tmp_path)
    message = str(info.value)
    assert 'expected name: "folder", got name: "other"' in message
    assert str(model_dir / "config.pbtxt") in message


def test_unparsable_config_names_the_file(tmp_path):
    model_dir = _python_model_dir(tmp_path, "m", 'name: "m"\nmax_batch: 4\n')
    with pytest.raises(ConfigError) as info:
        read_repository(tmp_path)
    assert str(model_dir / "config.pbtxt") in str(info.value) and "max_batch" in str(info.value)


def test_missing_name_takes_the_folder_name(tmp_path):
    model_dir = _python_model_dir(tmp_path, "m", 'backend: "python" output { name: "y" data_type: TYPE_FP32 dims: [1] }')
    (model_dir / "1" / "model.py").write_text(textwrap.dedent("""
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("y", np.ones((1,), np.float32))])
                        for _ in requests]
    """))
    assert read_repository(tmp_path).get("m").infer({})["y"].tolist() == [1.0]


def test_missing_model_py_names_the_file(tmp_path):
    model_dir = _python_model_dir(tmp_path, "m", CONFIG.format(name="m"))
    with pytest.raises(ConfigError) as info:
        read_repository(tmp_path)
    assert str(model_dir / "1" / "model.py") in str(info.value) and "TritonPythonModel" in str(info.value)


def test_unknown_backend_is_refused(tmp_path):
    _python_model_dir(tmp_path, "m", 'name: "m" backend: "tensorflow" output { name: "y" data_type: TYPE_FP32 dims: [1] }')
    with pytest.raises(ConfigError, match="backend='tensorflow'.*Fix:"):
        read_repository(tmp_path)


# ----------------------------------------------------------------------------- Triton's own example
# Written exactly as the "add_sub" model in Triton's python_backend README.
ADD_SUB_MODEL_PY = '''\
import json

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Your Python model must use the same class name. Every Python model
    that is created must have "TritonPythonModel" as the class name.
    """

    def initialize(self, args):
        # You must parse model_config. JSON string is not parsed here
        self.model_config = model_config = json.loads(args["model_config"])

        # Get OUTPUT0 configuration
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")

        # Get OUTPUT1 configuration
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")

        # Convert Triton types to numpy types
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        output0_dtype = self.output0_dtype
        output1_dtype = self.output1_dtype

        responses = []

        # Every Python backend must iterate over everyone of the requests
        # and create a pb_utils.InferenceResponse for each of them.
        for request in requests:
            # Get INPUT0
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            # Get INPUT1
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")

            out_0, out_1 = (
                in_0.as_numpy() + in_1.as_numpy(),
                in_0.as_numpy() - in_1.as_numpy(),
            )

            # Create output tensors. You need pb_utils.Tensor
            # objects to create pb_utils.InferenceResponse.
            out_tensor_0 = pb_utils.Tensor("OUTPUT0", out_0.astype(output0_dtype))
            out_tensor_1 = pb_utils.Tensor("OUTPUT1", out_1.astype(output1_dtype))

            inference_response = pb_utils.InferenceResponse(
                output_tensors=[out_tensor_0, out_tensor_1]
            )
            responses.append(inference_response)

        # You should return a list of pb_utils.InferenceResponse. Length
        # of this list must match the length of `requests` list.
        return responses

    def finalize(self):
        """`finalize` is called only once when the model is being unloaded."""
        print("Cleaning up...")
'''

ADD_SUB_CONFIG = '''\
name: "add_sub"
backend: "python"

input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
input [
  {
    name: "INPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "OUTPUT1"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]

instance_group [{ kind: KIND_CPU }]
'''


def test_hand_written_triton_python_model(tmp_path, capsys):
    model_dir = tmp_path / "models" / "add_sub"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(ADD_SUB_MODEL_PY)
    (model_dir / "config.pbtxt").write_text(ADD_SUB_CONFIG)

    registry = read_repository(tmp_path / "models")
    model = registry.get("add_sub")
    assert model.framework == "python"
    assert [(s.name, s.dims, s.dtype) for s in model.inputs] == [("INPUT0", (4,), "FP32"), ("INPUT1", (4,), "FP32")]
    a = np.array([1, 2, 3, 4], np.float32)
    b = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
    out = model.infer({"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    assert out["OUTPUT0"].dtype == np.float32

    registry.remove("add_sub")  # unloading calls finalize(), as Triton does
    assert "Cleaning up..." in capsys.readouterr().out

    # A repository we did not write reads as such: nbserve will not overwrite it unasked.
    with pytest.raises(ExportError):
        write_repository(tmp_path / "models", Registry())


def test_written_config_is_what_the_registry_holds(registry, tmp_path):
    model = registry.register(scale, example=X, instances=2, version_policy="all", parameters={"k": "v"})
    repo = write_repository(tmp_path / "repo", registry)
    written = parse((repo / "scale" / "config.pbtxt").read_text())
    assert written == model.config
    assert render(written) == model.pbtxt


def test_a_repository_read_back_writes_again_by_copying_its_files(tmp_path):
    reg = Registry()
    reg.register(lambda x: x * 2, name="double", example=np.ones((1, 3), "float32"))
    first = read_repository(write_repository(tmp_path / "a", reg.models()))
    second = read_repository(write_repository(tmp_path / "b", first.models()))
    x = np.ones((2, 3), "float32")
    assert second.get("double").infer({"x": x})["output_0"].tolist() == (x * 2).tolist()
    assert (tmp_path / "b" / "double" / "1" / "model.py").read_text() == (tmp_path / "a" / "double" / "1" / "model.py").read_text()
