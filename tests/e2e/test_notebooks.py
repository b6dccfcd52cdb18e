"""Every tutorial in notebooks/ runs top to bottom in a real kernel (nbclient), and says what it should.

The notebooks are copied with examples/ into a temporary folder and run from its notebooks/ folder,
as a user runs them from a clone (02 imports ../examples/readability.py); what they write
(model_repository/ ...) stays in the copy. The committed notebooks carry no outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"


def _texts(cell) -> str:
    """Everything a code cell showed as text: streams, text/plain and errors."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
        else:
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


class Executed:
    """A notebook after nbclient ran it."""

    def __init__(self, nb, folder: Path) -> None:
        self.nb, self.folder = nb, folder
        self.code = [c for c in nb.cells if c.cell_type == "code"]

    def cell(self, starts_with: str):
        """The first code cell whose source starts with ``starts_with``."""
        for cell in self.code:
            if cell.source.startswith(starts_with):
                return cell
        raise AssertionError(f"no cell starts with {starts_with!r}")

    def text(self, starts_with: str) -> str:
        return _texts(self.cell(starts_with))

    def stdout(self, starts_with: str) -> str:
        return "".join(o.text for o in self.cell(starts_with).get("outputs", [])
                       if o.output_type == "stream" and o.name == "stdout")

    def mimes(self, starts_with: str) -> list[str]:
        return [m for o in self.cell(starts_with).get("outputs", []) for m in o.get("data", {})]

    @property
    def stderr(self) -> str:
        return "".join(o.text for c in self.code for o in c.get("outputs", [])
                       if o.output_type == "stream" and o.name == "stderr")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tutorials")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return root / "notebooks"


def run_notebook(name: str, folder: Path) -> Executed:
    nb = nbformat.read(folder / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    nbformat.write(nb, folder / f"executed-{name}")  # kept in the temporary folder for a look after a failure
    executed = Executed(nb, folder)
    assert "Traceback" not in executed.stderr and "UsageError" not in executed.stderr, executed.stderr
    assert all(c.execution_count for c in executed.code)
    return executed


def test_there_are_five_tutorials():
    assert [p.name for p in NOTEBOOKS] == ["01-quickstart.ipynb", "02-ensemble-builder.ipynb",
                                           "03-benchmark-and-tune.ipynb", "04-export-and-deploy.ipynb", "05-gpu.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_01_quickstart(workdir):
    nb = run_notebook("01-quickstart.ipynb", workdir)
    table = nb.text("%nbserve models")
    for name, framework in [("text_stats", "python"), ("mlp", "torch"), ("forest", "sklearn")]:
        assert any(line.split()[:3] == [name, "1", framework] for line in table.splitlines()), table
    assert 'platform: "pytorch_libtorch"' in nb.text('print(nbserve.get("mlp").pbtxt)')
    assert nb.text("server = %nbserve start").startswith("<nbserve.Server running (thread)")
    assert nb.text("import tritonclient.grpc").startswith("array([[14.,  2.],")  # characters and words
    assert WIDGET in nb.mimes("run = %nbserve bench"), "no live benchmark plot"
    assert "<BenchRun 'mlp (inprocess)' done, 2 level(s)>" in nb.text("run = %nbserve bench")
    status = nb.text("%nbserve status").splitlines()
    assert next(line for line in status if line.startswith("mlp")).split()[2] != "0"  # requests were served
    assert nb.text("%nbserve export").startswith(f"Exported 3 models to {workdir / 'model_repository'}")
    assert nb.text("%nbserve validate").startswith("OK: 0 errors, 0 warnings in 3 models")
    assert nb.text("%nbserve stop").startswith("nbserve: stopped the thread server")
    assert (workdir / "model_repository" / "mlp" / "1" / "model.pt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_02_ensemble_builder(workdir):
    nb = run_notebook("02-ensemble-builder.ipynb", workdir)
    assert WIDGET in nb.mimes("builder = nbserve.EnsembleBuilder")
    drawn = nb.text("if not builder.edges:")
    assert "invalid edges: none" in drawn
    assert "<Ensemble 'readability' inputs=['text', 'weight'] steps=[preprocess, bert, trees, postprocess] " \
           "outputs=['score']" in drawn
    steps = [line.split()[0] for line in nb.text("builder.register()").splitlines() if " queue " in line]
    assert steps == ["preprocess", "bert", "trees", "postprocess"]
    assert nb.text("server = %nbserve start").startswith("array([[")  # the served ensemble == by hand (asserted)
    assert "<BenchRun 'readability (inprocess)' done, 2 level(s)>" in nb.text("%nbserve bench readability")
    assert "Exported 5 models to" in nb.text("%nbserve export readability_repository")
    assert (workdir / "readability_repository" / "readability" / "config.pbtxt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_03_benchmark_and_tune(workdir):
    nb = run_notebook("03-benchmark-and-tune.ipynb", workdir)
    assert WIDGET in nb.mimes("run = %nbserve bench mlp")
    levels = nb.text("run.results").splitlines()[1:]
    assert [line.split()[1] for line in levels] == ["1", "4", "16"]
    assert PLOTLY in nb.mimes("runs = [nbserve.bench")  # in-process vs HTTP vs gRPC on one chart
    assert WIDGET in nb.mimes("dashboard = nbserve.Dashboard")
    sweep = nb.stdout("sweep = %nbserve sweep")
    assert WIDGET in nb.mimes("sweep = %nbserve sweep")  # the live sweep plot
    assert "the most throughput within the 50.0 ms budget" in sweep
    picked = sweep.split(" at concurrency")[0]  # e.g. "batch≤32, delay 500us"
    assert f"nbserve: applied to 'mlp' v1: {picked}" in sweep
    max_batch = int(picked.split("≤")[1].split(",")[0])
    assert f"max_batch_size: {max_batch}\n" in nb.text("print(nbserve.get('mlp').pbtxt)")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_04_export_and_deploy(workdir):
    nb = run_notebook("04-export-and-deploy.ipynb", workdir)
    assert "classifier  python (portable pytorch)" in nb.text("report = %nbserve export")
    assert "OK: 0 errors" in nb.text("%nbserve validate model_repository")
    broken = nb.text("import shutil")
    assert "broken_repository/normalize/config.pbtxt:2: error: model 'normalize' max_batch_size" in broken
    assert "FAILED: 1 error" in broken
    assert nb.text("server = %nbserve start --subprocess").startswith("array([[")
    parity = nb.text("%nbserve parity")
    assert parity.startswith("Parity of model_repository (agree;"), parity
    from nbserve._tritonserver import available

    if available():  # where tritonserver runs, both servers answered every model
        assert "triton max abs" in parity and "not compared" not in parity, parity
    deploy = nb.text("print(report.docker_run)")
    assert "tritonserver --model-repository=/models" in deploy and "kind: InferenceService" in deploy


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_05_gpu_runs_or_skips_cleanly(workdir):
    nb = run_notebook("05-gpu.ipynb", workdir)
    found = nb.text("%load_ext nbserve")
    if "CUDA devices: 0" in found:
        skipped = [c for c in nb.code[1:] if _texts(c).startswith("skipped: ")]
        assert len(skipped) == len(nb.code) - 1  # every cell after the one that looks for a GPU
        assert not (workdir / "gpu_repository").exists()
    else:
        assert "Exported" in nb.text("gpu_models = ")
