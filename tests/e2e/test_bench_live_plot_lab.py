"""nbserve.bench's live plot in a real JupyterLab, in headless Chromium: it updates while the run goes.

A notebook serves a model and starts ``nbserve.bench(..., background=True)``; the live figure renders,
and the browser itself records every title it shows (a MutationObserver) and how many throughput
points it draws, while the notebook stays usable (a cell runs in the middle of the benchmark). The
real Stop button ends the run; Python then confirms that every tick reached the browser and that no
benchmark thread is left. Screenshots go to $NBSERVE_SHOTS or artifacts/screenshots/.

Fixtures (``lab``, ``jupyter_server``) come from tests/e2e/conftest.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("playwright", reason='needs the test extra: pip install "nbserve[test]"')
pytest.importorskip("plotly", reason='needs the notebook extra: pip install "nbserve[notebook]"')
pytest.importorskip("ipywidgets", reason='needs the notebook extra: pip install "nbserve[notebook]"')

from playwright.sync_api import expect  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SETUP = """\
import threading
import numpy as np
import nbserve

registry = nbserve.Registry()
registry.register(lambda x: x * 2, name="double", example=np.ones((1, 4), "float32"), max_batch_size=8)
server = nbserve.serve(registry, grpc=False, metrics=False)
"""

# A hundred levels of ~1.75 s: the run lasts until the Stop button ends it (after a few levels).
RUN = """\
run = nbserve.bench(server, "double", concurrency=list(range(1, 101)), measurement_interval_ms=500,
                    warmup_s=0.25, max_windows=3, tick_s=0.5, background=True)
"""

OBSERVE = """gd => {
    window.__titles = [];
    window.__points = [];
    const record = () => {
        const title = gd.querySelector('.gtitle')?.textContent;
        if (title && title !== window.__titles.at(-1)) {
            window.__titles.push(title);
            window.__points.push(gd.data[0].x.length);
        }
    };
    record();
    new MutationObserver(record).observe(gd, {subtree: true, childList: true, characterData: true});
}"""


def test_live_plot_updates_during_a_run_and_stops(lab, jupyter_server):
    name = jupyter_server.write_notebook("bench_live.ipynb", [SETUP, RUN])
    lab.open_notebook(name)
    lab.run_all()  # returns at once: the run goes on in the background
    page = lab.page
    plot = page.locator(".jp-OutputArea-output .js-plotly-plot").first
    expect(plot).to_be_visible()
    # The notebook stays usable: a cell runs while the benchmark goes on.
    assert lab.run_cell("print(run.running, run.status)").strip() == "True running"
    expect(plot.locator(".gtitle")).to_contain_text("infer/s")
    plot.evaluate(OBSERVE)

    # The figure changes in place while the benchmark runs: new titles (level, phase, infer/s) and
    # more throughput points each tick.
    page.wait_for_function("() => window.__titles.length >= 6", timeout=120_000)
    page.mouse.move(5, 5)  # no modebar tooltip in the screenshots
    lab.shot("bench_live_running_1", plot)
    curve_points = "() => document.querySelector('.jp-OutputArea-output .js-plotly-plot').data[8].x.length"
    page.wait_for_function(f"{curve_points} >= 2", timeout=120_000)
    lab.shot("bench_live_running_2", plot)
    titles = page.evaluate("() => window.__titles")
    points = page.evaluate("() => window.__points")
    assert all("infer/s" in t for t in titles)
    assert len(set(titles)) >= 6
    assert points == sorted(points) and points[-1] > points[0]  # the time series grows in place

    # The real Stop button ends the run; the plot says so.
    stop = page.locator(".jp-OutputArea-output button", has_text="Stop").first
    stop.scroll_into_view_if_needed()
    stop.click()
    expect(plot.locator(".gtitle")).to_contain_text("stopped", timeout=60_000)
    expect(stop).to_be_disabled()
    page.mouse.move(5, 5)
    lab.shot("bench_live_stopped")

    state = lab.python_json("[run.status, len(run.rows), len(run.timeline_rows), "
                            "[t.name for t in threading.enumerate() if t.name.startswith('nbserve-bench')]]")
    status, levels, ticks, threads = state
    assert status == "stopped" and levels >= 2 and threads == []
    drawn = plot.evaluate("gd => [gd.data[0].x.length, gd.data[8].x.length]")
    assert drawn == [min(ticks, 300), levels]  # every tick and every level reached the browser
    lab.run_cell("server.stop()")
