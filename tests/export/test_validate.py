"""nbserve validate: each broken repository gets its finding, at the file, line and field, with the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nbserve
from nbserve.errors import ConfigError
from nbserve.export.validate import Issue, ValidationReport, validate

from broken_repositories import CASES, GOOD_CONFIG, python_model

ROOT = Path(__file__).resolve().parents[2]


def written(files: dict, root: Path) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_broken_repository_gets_its_message(case, tmp_path):
    for package in case.needs:
        pytest.importorskip(package)
    repo = case.write(tmp_path / "repo")
    report = validate(repo)
    found = [i for i in report.issues if i.code == case.code and i.severity == case.severity]
    assert found, f"expected {case.severity} {case.code}, got:\n{report}"
    text = "\n".join(str(i) for i in found)
    for words in case.says:
        assert words in text, f"{words!r} not in:\n{text}"
    assert all(i.fix for i in found), "every finding says how to fix it"
    assert all(i.path.startswith("repo/") for i in report.issues)
    if case.line is not None:
        assert case.line in [i.line for i in found], text
    assert report.ok == (case.severity != "error" and not report.errors)


def test_there_are_enough_broken_repositories():
    assert sum(c.severity == "error" for c in CASES) >= 15
    assert len({c.code for c in CASES}) >= 20


def test_a_working_repository_has_nothing_to_report(tmp_path):
    repo = written({**python_model("double"), **python_model("twice", GOOD_CONFIG.format(name="twice"))},
                   tmp_path / "repo")
    report = validate(repo)
    assert report.ok and report.issues == [] and report.models == ["double", "twice"]
    assert str(report) == f"OK: 0 errors, 0 warnings in 2 models ({repo})"


def test_one_run_reports_every_model_and_finding(tmp_path):
    root = tmp_path / "repo"
    chosen = [c for c in CASES if c.severity == "error"][:5]
    for case in chosen:
        case.write(tmp_path / case.id)
        for path in (tmp_path / case.id).rglob("*"):
            if path.is_file():
                target = root / path.relative_to(tmp_path / case.id).as_posix().replace("broken", case.id, 1)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes().replace(b'"broken"', f'"{case.id}"'.encode()))
    report = validate(root)
    assert sorted(i.model for i in report.errors) == sorted(c.id for c in chosen)  # one each, none lost
    lines = str(report).splitlines()
    assert lines[-1].startswith("FAILED: 5 errors, 0 warnings in 3 models")  # 2 configs do not parse


def test_missing_repository(tmp_path):
    report = validate(tmp_path / "nowhere")
    assert report.codes() == ["repository-missing"] and not report.ok


def test_report_forms(tmp_path):
    case = next(c for c in CASES if c.id == "zero-dim")
    report = validate(case.write(tmp_path / "repo"))
    assert isinstance(report, ValidationReport) and isinstance(report.errors[0], Issue)
    assert repr(report) == str(report)
    page = report._repr_html_()
    assert "<table>" in page and "dims [0] has 0" in page and "FAILED" in page
    with pytest.raises(ConfigError, match=r"repo/broken/config.pbtxt:4: error: .*dims \[0\] has 0"):
        report.raise_for_errors()
    assert validate(written(python_model("fine"), tmp_path / "ok")).raise_for_errors().ok


def test_everything_nbserve_exports_validates(registry, tmp_path):
    registry.register(lambda x: x * 2, name="double", example=np.ones((2, 3), "float32"))
    registry.register(lambda x: x.sum(keepdims=True), name="unbatched", example=np.ones(3, "float32"),
                      max_batch_size=0)
    registry.register(nbserve.Ensemble("chain").input("x", "FP32", [3])
                      .step("double", inputs={"x": "x"}, outputs={"output_0": "y"}).output("y"))
    report = nbserve.export(tmp_path / "repo", registry=registry)
    assert report.validation.ok and report.validation.issues == []
    assert nbserve.validate(report.path).issues == []


# ----------------------------------------------------------------------------- command line
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbserve.cli", "validate", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_cli_prints_the_findings_and_fails_on_errors(tmp_path):
    case = next(c for c in CASES if c.id == "ensemble-batch-larger-than-step")
    done = run_cli(str(case.write(tmp_path / "bad")))
    assert done.returncode == 1
    assert "bad/broken/config.pbtxt:3: error: model 'broken' max_batch_size: max_batch_size 16 is larger" in done.stdout
    assert "FAILED: 1 error" in done.stdout

    good = run_cli(str(written(python_model("fine"), tmp_path / "good")))
    assert good.returncode == 0 and "OK: 0 errors" in good.stdout

    warned = next(c for c in CASES if c.id == "duplicate-input").write(tmp_path / "warned")
    assert run_cli(str(warned)).returncode == 0
    strict = run_cli(str(warned), "--strict")
    assert strict.returncode == 1 and "warning:" in strict.stdout
