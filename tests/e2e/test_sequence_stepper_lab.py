"""The SequenceStepper panel in a real JupyterLab and a real browser: its buttons step the sequence.

A stateful running sum is served in the notebook's kernel; the stepper's Step, End and Restart
buttons are clicked with the real mouse and the table the panel shows is read back, next to the
state the kernel holds.
"""

from __future__ import annotations

import pytest

pytest.importorskip("playwright")
pytest.importorskip("ipywidgets")
from playwright.sync_api import expect

pytestmark = [pytest.mark.slow]

SETUP = """\
import numpy as np, nbserve
reg = nbserve.Registry()
def running_sum(x, total):
    total = total + x
    return {"y": total * 10, "total": total}
nbserve.register_stateful(running_sum, state=nbserve.StateSpec("total", [2]),
                          example={"x": np.ones((1, 2), "float32")}, registry=reg)
server = nbserve.serve(reg, grpc=False, metrics=False)
stepper = nbserve.SequenceStepper(server, "running_sum", sequence_id=4242,
                                  inputs=lambda step, state: {"x": np.full((1, 2), step + 1, "float32")})
stepper
"""


def test_the_buttons_step_the_sequence_and_the_table_follows(lab, jupyter_server):
    notebook = jupyter_server.write_notebook("stepper.ipynb", [SETUP])
    lab.open_notebook(notebook)
    lab.run_all()
    page = lab.page
    panel = page.locator(".widget-vbox").filter(has=page.locator("button", has_text="Restart"))
    expect(panel).to_be_visible()
    table = panel.locator(".nbserve-sequence")
    expect(table).to_contain_text("sequence 4242 (not started, 0 steps)")

    panel.locator("button", has_text="Step").click()
    expect(table).to_contain_text("running, 1 step)")
    panel.locator("button", has_text="Step").click()
    panel.locator("button", has_text="End").click()
    expect(table).to_contain_text("ended, 3 steps")
    expect(panel.locator("button", has_text="Step")).to_be_disabled()
    rows = table.locator("tr")
    expect(rows).to_have_count(4)  # header + 3 steps
    expect(rows.nth(1)).to_contain_text("START")
    expect(rows.nth(3)).to_contain_text("END")
    expect(rows.nth(3)).to_contain_text("[[60. 60.]]")  # y = 10 * (1 + 2 + 3)
    lab.shot("sequence_stepper", panel)
    assert lab.python_json("stepper.state['total'].tolist()") == [[6.0, 6.0]]
    assert lab.python_json("server.core.model_statistics('running_sum')['model_stats'][0]['sequence_stats']['ended']") == 1

    panel.locator("button", has_text="Restart").click()
    expect(table).to_contain_text("not started, 0 steps")
    panel.locator("button", has_text="Step").click()
    expect(table).to_contain_text("running, 1 step)")
    lab.run_cell("server.stop()")
