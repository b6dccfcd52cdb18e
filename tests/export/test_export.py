"""nbserve.export: what it writes, that it reads back to the same answers, and that it is atomic and safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nbserve
from nbserve.config import parse
from nbserve.errors import ExportError, ModelNotFound
from nbserve.export import portable as portable_module
from nbserve.export.exporter import ExportReport
from nbserve.registry import ModelVersion
from nbserve.repository import MARKER_FILE

from export_models import assert_same, expected, read_back_answers, register_pipeline, register_python

ROOT = Path(__file__).resolve().parents[2]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- what is written
def test_python_models_export_with_their_serving_config(registry, tmp_path):
    samples = register_python(registry)
    report = nbserve.export(tmp_path / "repo", registry=registry)

    assert isinstance(report, ExportReport) and report.path == tmp_path / "repo"
    assert report.names == ["affine", "words"]
    assert {p.name for p in report.path.iterdir()} == {MARKER_FILE, "README.md", "kserve.yaml", "affine", "words"}
    for name in report.names:
        written = parse((report.path / name / "config.pbtxt").read_text())
        live = registry.get(name).config
        # The config that served traffic in the notebook, field for field.
        assert written.max_batch_size == live.max_batch_size
        assert written.dynamic_batching == live.dynamic_batching
        assert list(written.instance_group) == list(live.instance_group)
        assert list(written.input) == list(live.input) and list(written.output) == list(live.output)
        assert written.backend == "python"
        files = {f for f, _ in report.model(name).files}
        assert {f"{name}/config.pbtxt", f"{name}/requirements.txt", f"{name}/1/model.py", f"{name}/1/callable.pkl"} <= files
        assert report.model(name).source == "registered" and report.model(name).versions == [1]
    affine = parse((report.path / "affine" / "config.pbtxt").read_text())
    assert list(affine.dynamic_batching.preferred_batch_size) == [4, 8]
    assert affine.instance_group[0].count == 2 and affine.instance_group[0].kind == affine.instance_group[0].KIND_CPU
    assert report.validation.ok
    assert report.size_bytes == sum(len(b) for b in tree(report.path).values())
    assert_same_answers(report.path, registry, samples)


def assert_same_answers(repo: Path, registry, samples: dict) -> None:
    want = expected(registry, samples)
    got = read_back_answers(repo, samples)
    for name in samples:
        assert_same(got[name], want[name])


def test_every_version_gets_its_folder_and_the_latest_config(registry, tmp_path):
    registry.register(lambda x: x + 1, name="inc", example=np.ones((1, 2), "float32"))
    registry.register(lambda x: x + 2, name="inc", example=np.ones((1, 2), "float32"), max_batch_size=8)
    report = nbserve.export(tmp_path / "repo", registry=registry)
    assert report.model("inc").versions == [1, 2]
    assert parse((report.path / "inc" / "config.pbtxt").read_text()).max_batch_size == 8
    out = read_back_answers(report.path, {"inc": {"x": np.zeros((1, 2), "float32")}})
    assert out["inc"]["output_0"].tolist() == [[2.0, 2.0]]  # Triton serves the latest version


def test_gpu_instances_are_exported_and_flagged(registry, tmp_path):
    registry.register(lambda x: x * 2, name="on_gpu", example=np.ones((1, 2), "float32"), instance_kind="gpu")
    report = nbserve.export(tmp_path / "repo", registry=registry)
    config = parse((report.path / "on_gpu" / "config.pbtxt").read_text())
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert report.model("on_gpu").instances == "1 x GPU"
    assert any("KIND_GPU" in w and "on_gpu" in w for w in report.warnings)
    assert "--gpus=all" in report.docker_run
    assert 'nvidia.com/gpu: "1"' in (report.path / "kserve.yaml").read_text()


def test_chosen_models_only_and_ensembles_bring_their_steps(registry, tmp_path):
    samples = register_pipeline(registry)
    registry.register(lambda x: x, name="unrelated", example=np.ones((1, 2), "float32"))
    report = nbserve.export(tmp_path / "repo", ["pipeline"], registry=registry)
    assert report.names == ["pipeline", "score", "words"]
    assert report.model("pipeline").kind == "ensemble" and report.model("pipeline").source == "registered"
    assert report.model("score").source == report.model("words").source == "ensemble step"
    assert (report.path / "pipeline" / "1").is_dir()  # Triton needs the ensemble's version folder
    assert not (report.path / "unrelated").exists()
    assert_same_answers(report.path, registry, samples)


def test_unknown_names_and_empty_registries_are_refused(registry, tmp_path):
    registry.register(lambda x: x, name="double", example=np.ones((1, 2), "float32"))
    with pytest.raises(ModelNotFound, match="did you mean 'double'"):
        nbserve.export(tmp_path / "repo", ["doubel"], registry=registry)
    registry.clear()
    with pytest.raises(ExportError, match="no models to export"):
        nbserve.export(tmp_path / "repo", registry=registry)
    assert not (tmp_path / "repo").exists()


def test_report_reads_well_in_a_notebook(registry, tmp_path):
    register_python(registry)
    report = nbserve.export(tmp_path / "repo", registry=registry)
    text = repr(report)
    assert text.startswith(f"Exported 2 models to {tmp_path / 'repo'}")
    assert "affine" in text and "2 x CPU" in text and "KB" in text and report.docker_run in text
    page = report._repr_html_()
    assert "<table>" in page and "affine" in page and "docker run" in page


def test_long_exports_show_progress(registry, tmp_path, capsys):
    registry.register(lambda x: x, name="a", example=np.ones((1, 2), "float32"))
    nbserve.export(tmp_path / "quiet", registry=registry, progress=False)
    assert "nbserve export" not in capsys.readouterr().err
    nbserve.export(tmp_path / "loud", registry=registry, progress=True)
    assert "nbserve export" in capsys.readouterr().err


def test_the_doc_files_describe_the_repository(registry, tmp_path):
    register_pipeline(registry)
    report = nbserve.export(tmp_path / "my_models", registry=registry, storage_uri="gs://bucket/my_models")
    readme = (report.path / "README.md").read_text()
    assert "# Triton model repository `my_models`" in readme
    assert "| `text` | input | BYTES | [-1, 1] |" in readme and "`words` (ensemble step)" in readme
    assert report.docker_run in readme and "EXECUTION_ENV_PATH" in readme
    assert readme.index('client.infer("pipeline", inputs)') < readme.index('client.infer("words", inputs)')
    manifest = (report.path / "kserve.yaml").read_text()
    assert 'storageUri: "gs://bucket/my_models"' in manifest and 'name: "my-models"' in manifest
    requirements = (report.path / "words" / "requirements.txt").read_text()
    assert f"numpy=={np.__version__}" in requirements and "cloudpickle==" in requirements


# ----------------------------------------------------------------------------- safety
def test_an_nbserve_repository_is_replaced_and_a_foreign_folder_is_not(registry, tmp_path):
    registry.register(lambda x: x + 1, name="inc", example=np.ones((1, 2), "float32"))
    target = tmp_path / "repo"
    nbserve.export(target, registry=registry)
    registry.register(lambda x: x * 3, name="triple", example=np.ones((1, 2), "float32"))
    nbserve.export(target, registry=registry)  # ours: replaced without being told
    assert sorted(p.name for p in target.iterdir() if p.is_dir()) == ["inc", "triple"]

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ExportError, match="not written by nbserve") as caught:
        nbserve.export(foreign, registry=registry)
    assert "overwrite=True" in str(caught.value)
    assert tree(foreign) == {"thesis.tex": b"precious"}
    nbserve.export(foreign, registry=registry, overwrite=True)
    assert not (foreign / "thesis.tex").exists() and (foreign / "inc" / "config.pbtxt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "repo"]  # no staging left behind


def test_the_working_directory_and_files_are_never_targets(registry, tmp_path, monkeypatch):
    registry.register(lambda x: x, name="same", example=np.ones((1, 2), "float32"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    for target in (".", tmp_path, tmp_path.parent):
        with pytest.raises(ExportError, match="working directory"):
            nbserve.export(target, registry=registry, overwrite=True)
    with pytest.raises(ExportError, match="is a file"):
        nbserve.export(tmp_path / "keep.txt", registry=registry, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_model_names_cannot_escape_the_target(registry, tmp_path):
    good = registry.register(lambda x: x, name="good", example=np.ones((1, 2), "float32")).latest
    # A name that register() refuses, planted directly: the writer must refuse it too.
    for name in ("../escaped", "/tmp/escaped", "sub/dir"):
        registry.add(ModelVersion(name=name, version=1, config=good.config, runner=good.runner,
                                  framework="python", backend="python", obj=good.obj, options=good.options))
        with pytest.raises(Exception, match="directory name|escapes"):
            nbserve.export(tmp_path / "area" / "repo", registry=registry)
        registry.remove(name)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped").exists()
    assert not (tmp_path / "area" / "repo").exists()
    assert [p.name for p in (tmp_path / "area").iterdir()] == []  # the staging folder is gone too


class Interrupts:
    """A callable whose pickling (during export) raises what a Ctrl-C raises."""

    def __call__(self, x):
        return x

    def __reduce__(self):
        raise KeyboardInterrupt


def test_an_interrupted_export_leaves_the_previous_repository(registry, tmp_path):
    registry.register(lambda x: x + 1, name="inc", example=np.ones((1, 2), "float32"))
    target = tmp_path / "repo"
    nbserve.export(target, registry=registry)
    before = tree(target)
    registry.register(Interrupts(), name="zz_interrupts", example=np.ones((1, 2), "float32"))
    with pytest.raises(KeyboardInterrupt):
        nbserve.export(target, registry=registry)
    assert tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_a_failing_writer_fails_the_whole_export(registry, tmp_path):
    import threading

    lock = threading.Lock()

    def holds_a_lock(x):
        with lock:
            return x

    registry.register(lambda x: x, name="fine", example=np.ones((1, 2), "float32"))
    registry.register(holds_a_lock, example=np.ones((1, 2), "float32"))
    with pytest.raises(ExportError, match="holds_a_lock.*cannot be serialized"):
        nbserve.export(tmp_path / "repo", registry=registry)
    assert list(tmp_path.iterdir()) == []


KILLED_EXPORT = textwrap.dedent("""
    import sys
    import numpy as np
    import nbserve

    class Blocks:
        def __call__(self, x):
            return x

        def __reduce__(self):
            print("writing", flush=True)
            sys.stdin.readline()  # the parent kills us while we are here
            raise SystemExit(3)

    nbserve.register(lambda x: x * 5, name="a_first", example=np.ones((1, 2), "float32"))
    nbserve.register(Blocks(), name="b_blocks", example=np.ones((1, 2), "float32"))
    nbserve.export(sys.argv[1])
""")


@pytest.mark.slow
def test_a_killed_export_leaves_the_target_alone_and_is_cleaned_up_later(registry, tmp_path):
    registry.register(lambda x: x + 1, name="inc", example=np.ones((1, 2), "float32"))
    target = tmp_path / "repo"
    nbserve.export(target, registry=registry)
    before = tree(target)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_EXPORT)
    child = subprocess.Popen([sys.executable, str(script), str(target)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"  # a_first is written, b_blocks is being written
        staging = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        assert staging, "the export should be building in a staging folder next to the target"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdin.close()
        child.stdout.close()
    assert tree(target) == before  # not a byte of the half-built repository reached the target
    nbserve.export(target, registry=registry)  # the next export removes the dead one's staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.py", "repo"]


# ----------------------------------------------------------------------------- exporting a repository
def test_an_existing_repository_can_be_exported_and_made_portable(registry, tmp_path):
    pytest.importorskip("onnxruntime")
    from export_models import register_onnx

    samples = register_onnx(registry)
    native = nbserve.export(tmp_path / "native", registry=registry)
    (native.path / "stray.txt").write_text("not a model")
    report = nbserve.export(tmp_path / "portable", source=native.path, portable=True)
    assert report.names == ["linear"] and report.model("linear").portable == "onnxruntime"
    assert report.model("linear").source == f"copied from {native.path}"
    assert not (report.path / "stray.txt").exists()
    assert_same_answers(report.path, registry, samples)
    with pytest.raises(ExportError, match="no such model folder"):
        nbserve.export(tmp_path / "other", ["missing"], source=native.path)
    with pytest.raises(ExportError, match="same folder"):
        nbserve.export(native.path, source=native.path)


def test_the_portable_model_py_embeds_both_runtimes_verbatim():
    from nbserve.backends import _python_runtime
    from nbserve.export import _portable_runtime

    source = portable_module.model_py_source("onnxruntime", "model.onnx")
    assert Path(_python_runtime.__file__).read_text() in source
    assert Path(_portable_runtime.__file__).read_text() in source
    compile(source, "model.py", "exec")


# ----------------------------------------------------------------------------- command line
def test_cli_exports_what_a_script_registers(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import numpy as np, nbserve\n"
                      "nbserve.register(lambda x: x * 2, name='twice', example=np.ones((1, 3), 'float32'))\n"
                      "nbserve.register(lambda x: x * 3, name='thrice', example=np.ones((1, 3), 'float32'))\n")
    done = subprocess.run([sys.executable, "-m", "nbserve.cli", "export", str(tmp_path / "repo"), "--script",
                           str(script), "--models", "twice"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "Exported 1 model to" in done.stdout and "twice" in done.stdout
    assert sorted(p.name for p in (tmp_path / "repo").iterdir() if p.is_dir()) == ["twice"]
    again = subprocess.run([sys.executable, "-m", "nbserve.cli", "export", str(tmp_path / "copy"), "--from",
                            str(tmp_path / "repo")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "copy" / "twice" / "1" / "callable.pkl").is_file()
    refused = subprocess.run([sys.executable, "-m", "nbserve.cli", "export", str(tmp_path), "--from",
                              str(tmp_path / "repo")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert refused.returncode == 1 and "nbserve export: error:" in refused.stderr
    assert "not written by nbserve" in refused.stderr


def test_nbserve_export_is_the_function_even_after_importing_the_package(registry, tmp_path):
    """Importing nbserve.export.<module> binds the package to nbserve.export: the package is callable."""
    import importlib

    package = importlib.import_module("nbserve.export")
    importlib.import_module("nbserve.export.validate")
    registry.register(lambda x: x, name="same", example=np.ones((1, 2), "float32"))
    assert package(tmp_path / "repo", registry=registry).names == ["same"]
    assert nbserve.export(tmp_path / "again", registry=registry).names == ["same"]


def test_python_models_read_from_a_repository_are_exported_by_copying_the_repository(registry, tmp_path):
    registry.register(lambda x: x * 2, name="double", example=np.ones((1, 2), "float32"))
    first = nbserve.export(tmp_path / "first", registry=registry).path
    back = nbserve.read_repository(first)
    try:
        from_registry = nbserve.export(tmp_path / "second", registry=back)  # copies the files it read
    finally:
        back.clear()
    copied = nbserve.export(tmp_path / "third", source=first)
    for report in (from_registry, copied):
        answers = read_back_answers(report.path, {"double": {"x": np.ones((1, 2), "float32")}})
        assert answers["double"]["output_0"].tolist() == [[2.0, 2.0]]
