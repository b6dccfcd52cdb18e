"""The ``nbserve`` command line and the demo it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nbserve import demo
from nbserve.cli import main
from nbserve.repository import MARKER_FILE


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("nbserve 0.")


def test_demo_python_only(tmp_path, capsys):
    out = tmp_path / "repo"
    assert main(["demo", "--frameworks", "python", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "registered 'text_features' (python)" in printed
    assert 'name: "text_features"' in printed and "data_type: TYPE_STRING" in printed  # its config.pbtxt
    assert "text_features: 2 rows, outputs features, normalized match" in printed
    assert printed.rstrip().splitlines()[-1].startswith("all outputs match")
    assert (out / MARKER_FILE).is_file() and (out / "text_features" / "1" / "model.py").is_file()
    assert main(["demo", "--frameworks", "python", "--out", str(out)]) == 0  # its own output: replaced


def test_demo_refuses_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo", "--frameworks", "python", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nbserve demo: error:") and "overwrite=True" in err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_unknown_framework(capsys):
    assert main(["demo", "--frameworks", "python,tensorflow"]) == 1
    assert "unknown demo framework tensorflow" in capsys.readouterr().err


def test_missing_frameworks_are_skipped_with_the_extra(registry):
    absent = demo.Framework("imaginary", ("nbserve_no_such_package",), "imaginary", lambda r: None)
    lines: list[str] = []
    assert demo.register_models(registry, [absent], lines.append) == []
    assert lines == ['  skipped imaginary: nbserve_no_such_package not installed (pip install "nbserve[imaginary]")']
    either = demo.Framework("trees", (), "trees", lambda r: None, any_of=("nbserve_no_a", "nbserve_no_b"))
    assert either.missing() == ["nbserve_no_a or nbserve_no_b"]


def test_the_text_model_handles_bytes():
    import numpy as np

    out = demo.text_features(np.array([[b"Aa  Bb"]], dtype=object))
    assert out["features"].tolist() == [[6.0, 2.0, pytest.approx(2 / 6)]]
    assert out["normalized"].tolist() == [[b"aa bb"]]


@pytest.mark.slow
def test_full_demo_as_a_command(tmp_path):
    """What the README's first command runs, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "nbserve.cli", "demo"], capture_output=True, text=True, timeout=110, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all outputs match" in result.stdout
    registered = [line for line in result.stdout.splitlines() if line.startswith("  registered")]
    installed = [f for f in demo.FRAMEWORKS if not f.missing()]
    assert len(registered) == len(installed)  # every installed framework ran, none was skipped


def test_foundation_example_runs(tmp_path):
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "foundation.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "repo")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "standardize: outputs match" in result.stdout and "word_count: outputs match" in result.stdout
    assert (tmp_path / "repo" / "word_count" / "config.pbtxt").is_file()
