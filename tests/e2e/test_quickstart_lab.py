"""notebooks/01-quickstart.ipynb, run as a user runs it: Run All in a real JupyterLab, in headless
Chromium. Checks what the page shows (the models table, the live benchmark plot drawn by plotly,
the benchmark, export and validation tables, no error anywhere) and the kernel's state after, and
takes screenshots (to $NBSERVE_SHOTS or artifacts/screenshots/).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason='needs the test extra: pip install "nbserve[test]"')
pytest.importorskip("plotly", reason='needs the notebook extra: pip install "nbserve[notebook]"')

from playwright.sync_api import expect  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

QUICKSTART = Path(__file__).resolve().parents[2] / "notebooks" / "01-quickstart.ipynb"


def output_of(page, source_start: str):
    """The output area of the code cell whose source starts with ``source_start``."""
    cells = page.locator(".jp-CodeCell")
    for i in range(cells.count()):
        cell = cells.nth(i)
        if cell.locator(".jp-InputArea-editor").inner_text().strip().startswith(source_start):
            return cell.locator(".jp-OutputArea")
    raise AssertionError(f"no cell starts with {source_start!r}")


def test_quickstart_runs_all_in_jupyterlab(lab, jupyter_server):
    shutil.copy(QUICKSTART, jupyter_server.root / QUICKSTART.name)
    lab.open_notebook(QUICKSTART.name)
    lab.run_all()  # resolves after the last cell's reply (Run All stops at a failing cell)
    page = lab.page

    prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
    assert prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), prompts  # none is [*] or [ ]
    # No traceback, no UsageError, nothing on stderr in any cell.
    expect(page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")).to_have_count(0)
    expect(page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")).to_have_count(0)

    models = output_of(page, "%nbserve models").locator("table.nbserve-models")
    expect(models).to_be_visible()
    assert [row.split("\t")[0] for row in models.locator("tbody tr").all_inner_texts()] == ["forest", "mlp", "text_stats"]
    models.scroll_into_view_if_needed()
    page.mouse.move(5, 5)  # no hover tooltips in the screenshots
    lab.shot("quickstart-1-models")

    bench = output_of(page, "run = %nbserve bench")
    plot = bench.locator(".js-plotly-plot")
    expect(plot).to_be_visible()
    expect(plot.locator(".gtitle")).to_contain_text("done, 2 level(s)")  # the live title, updated to the end
    assert plot.evaluate("gd => gd.data[0].x.length") > 0  # throughput over time was drawn
    assert plot.evaluate("gd => gd.data[8].x.length") == 2  # one latency-throughput point per level
    expect(bench.locator("table").last).to_contain_text("Concurrency")  # the run's table, the cell's result
    plot.scroll_into_view_if_needed()
    page.mouse.move(5, 5)
    lab.shot("quickstart-2-bench")

    export = output_of(page, "%nbserve export").locator(".nbserve-export")
    expect(export).to_contain_text("Exported 3 models to")
    expect(output_of(page, "%nbserve validate").locator(".nbserve-validate")).to_contain_text("OK: 0 errors")
    expect(output_of(page, "%nbserve stop")).to_contain_text("nbserve: stopped the thread server")
    export.scroll_into_view_if_needed()
    page.mouse.move(5, 5)
    lab.shot("quickstart-3-export")

    # The kernel agrees with the page.
    assert lab.python_json("[server.is_running, [r['concurrency'] for r in run.rows]]") == [False, [1, 8]]
    assert (jupyter_server.root / "model_repository" / "forest" / "config.pbtxt").is_file()
