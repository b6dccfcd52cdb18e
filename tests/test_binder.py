"""binder/ holds what repo2docker (mybinder.org) needs to open the repository on CPU, consistent with
pyproject.toml and the README: the Python version, the CPU torch pin, an executable postBuild that
installs the notebook experience, and the quickstart link."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def requirement_lines() -> list[str]:
    return [line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def postbuild_commands() -> list[str]:
    return [line.strip() for line in (BINDER / "postBuild").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_only_files_repo2docker_reads():
    # repo2docker's configuration files; anything else in binder/ would be ignored, and an
    # environment.yml next to requirements.txt would silently win over it.
    assert {p.name for p in BINDER.iterdir()} == {"requirements.txt", "postBuild", "runtime.txt"}


def test_runtime_python_satisfies_requires_python():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(\d+\.\d+)", runtime)
    assert match, f"runtime.txt must read python-X.Y, got {runtime!r}"
    assert Version(match.group(1)) in SpecifierSet(PROJECT["requires-python"])


def test_torch_is_the_pinned_cpu_wheel():
    lines = requirement_lines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    torch = [Requirement(line) for line in lines if line.startswith("torch")]
    assert len(torch) == 1 and str(torch[0].specifier).startswith("==")
    version = Version(str(torch[0].specifier)[2:])
    assert version.local == "cpu"  # the CPU build: no CUDA packages on a CPU-only builder
    # The same torch as the README's set-up command and CI.
    pin = re.search(r"torch==(\d+\.\d+\.\d+)", (ROOT / "README.md").read_text()).group(1)
    assert version.public == pin
    assert f"torch=={pin}" in (ROOT / ".ci" / "run").read_text()
    # ...and one the torch extra accepts.
    for extra in ("torch", "transformers"):
        wanted = [Requirement(r) for r in PROJECT["optional-dependencies"][extra] if r.startswith("torch")]
        assert all(Version(version.public) in r.specifier for r in wanted)


def test_postbuild_is_an_executable_bash_script():
    path = BINDER / "postBuild"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert path.stat().st_mode & stat.S_IXUSR
    mode = subprocess.run(["git", "ls-files", "-s", "binder/postBuild"], cwd=ROOT, capture_output=True,
                          text=True).stdout.split()[:1]
    if mode:  # in a git checkout: the executable bit is committed, so a clone keeps it
        assert mode == ["100755"]
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_postbuild_installs_the_notebook_experience_with_extras_that_exist():
    installs = [c for c in postbuild_commands() if "pip install" in c]
    assert len(installs) == 1
    match = re.search(r'-e "\.\[([a-z,]+)\]"', installs[0])
    assert match, installs[0]
    extras = match.group(1).split(",")
    defined = set(PROJECT["optional-dependencies"])
    assert set(extras) <= defined, set(extras) - defined
    assert "notebook" in extras  # JupyterLab, ipywidgets, anywidget, plotly: the magics' live plots
    assert "gpu" not in extras and "all" not in extras  # mybinder.org builds on CPU; no test tools needed
    # Every framework the tutorials import on CPU comes with those extras.
    needed = {"torch", "onnx", "trees", "transformers", "notebook"}
    assert needed <= set(extras)


def test_postbuild_smoke_test_is_a_real_command():
    assert postbuild_commands()[-1] == "nbserve demo"
    assert PROJECT["scripts"]["nbserve"] == "nbserve.cli:main"
    result = subprocess.run([sys.executable, "-m", "nbserve.cli", "demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--out" in result.stdout


def test_notebook_extra_holds_what_the_tutorials_display():
    names = {Requirement(r).name for r in PROJECT["optional-dependencies"]["notebook"]}
    assert {"jupyterlab", "ipywidgets", "anywidget", "plotly", "pandas"} <= names


def test_readme_links_binder_to_the_quickstart():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"https://mybinder\.org/v2/gh/[^\s)`]+", readme)
    assert links and all(link.endswith("?urlpath=lab/tree/notebooks/01-quickstart.ipynb") for link in links)
    assert (ROOT / "notebooks" / "01-quickstart.ipynb").is_file()
