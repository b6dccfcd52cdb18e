"""EnsembleBuilder in a real JupyterLab, in headless Chromium, driven with the real mouse and keyboard.

The readability pipeline (tiny models, tests/widgets/tiny_readability.py) is drawn by dragging models
from the palette and connecting ports; an invalid connection shows its reason; the ensemble is
registered and a sample runs; the results are read back in Python and compared with the same
ensemble written in code. A second test shows an ensemble built in code (automatic layout) and a
palette that follows registrations. Screenshots go to $NBSERVE_SHOTS or artifacts/screenshots/.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason='needs the test extra: pip install "nbserve[test]"')
pytest.importorskip("anywidget", reason='needs the notebook extra: pip install "nbserve[notebook]"')

from playwright.sync_api import expect  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

READABILITY = (Path(__file__).resolve().parents[1] / "widgets" / "tiny_readability.py").read_text()
SETUP = READABILITY + "\n\nimport nbserve\nregister_readability(nbserve.default_registry)\n"
BUILDER = 'builder = nbserve.EnsembleBuilder(name="readability", sample_inputs=SAMPLE)\nbuilder'
FROM_CODE = "shown = nbserve.EnsembleBuilder(ensemble=readability_in_code())\nshown"

# Where the drawing goes, in canvas pixels (the canvas starts at zoom 1 with no offset).
STEPS = {"preprocess": (220, 40), "bert": (490, 10), "trees": (490, 250), "blend": (770, 110)}


def node(page, node_id: str):
    return page.locator(f'.react-flow__node[data-id="{node_id}"]')


def handle(page, node_id: str, port: str, kind: str):
    """A port: kind "source" (an output, on the right) or "target" (an input, on the left)."""
    return node(page, node_id).locator(f'.react-flow__handle.{kind}[data-handleid="{port}"]')


def dom_position(locator) -> list[int]:
    """Where React Flow draws a node (its transform), in canvas coordinates."""
    return locator.evaluate(
        """e => { const m = new DOMMatrixReadOnly(getComputedStyle(e).transform);
                  return [Math.round(m.e), Math.round(m.f)]; }""")


def drop_model(lab, model: str, x: int, y: int) -> None:
    """Drag a model from the palette and release it so that its node lands at (x, y)."""
    page = lab.page
    lab.drag(page.locator(f'.nbs-eb-palette-item[data-model="{model}"]'), page.locator(".nbs-eb-canvas"),
             offset=(x + 20, y + 12))  # the pointer holds the node 20, 12 px inside its corner
    expect(node(page, model)).to_be_visible()


def connect(lab, source: str, source_port: str, target: str, target_port: str) -> None:
    page = lab.page
    count = page.locator(".react-flow__edge").count()
    lab.drag(handle(page, source, source_port, "source"), handle(page, target, target_port, "target"))
    expect(page.locator(".react-flow__edge")).to_have_count(count + 1)


def expose(lab, node_id: str, port: str, kind: str, x: int, y: int) -> None:
    """Drag from a port and drop on empty canvas: the port becomes an ensemble input or output."""
    page = lab.page
    lab.drag(handle(page, node_id, port, kind), page.locator(".nbs-eb-canvas"), offset=(x, y))
    new = f"in:{port}" if kind == "target" else f"out:{port}"
    expect(node(page, new)).to_be_visible()


def test_readability_drawn_with_the_mouse(lab, jupyter_server):
    notebook = jupyter_server.write_notebook("builder.ipynb", [SETUP, BUILDER])
    lab.open_notebook(notebook)
    lab.run_all()
    page = lab.page
    root = page.locator(".nbs-eb-root")
    expect(root).to_be_visible()
    expect(page.locator(".nbs-eb-palette-item")).to_have_count(4)
    root.scroll_into_view_if_needed()
    canvas = page.locator(".nbs-eb-canvas").bounding_box()
    assert canvas["width"] >= 1150, f"the canvas is too narrow for this drawing: {canvas}"
    lab.shot("builder_01_rendered", root)

    # -- two models dragged in and connected; then the rest of the pipeline --------------------------
    for model, (x, y) in STEPS.items():
        drop_model(lab, model, x, y)
    nodes = {n["id"]: n for n in lab.python_json("builder.nodes")}
    assert list(nodes) == list(STEPS)
    for model, (x, y) in STEPS.items():
        # Python holds what the browser shows, and that is where the node was dropped.
        assert [nodes[model]["x"], nodes[model]["y"]] == dom_position(node(page, model))
        assert abs(nodes[model]["x"] - x) <= 2 and abs(nodes[model]["y"] - y) <= 2, nodes[model]
    connect(lab, "preprocess", "input_ids", "bert", "input_ids")
    connect(lab, "preprocess", "attention_mask", "bert", "attention_mask")
    assert lab.python_json("[[e['source'], e['target'], e['tensor']] for e in builder.edges]") == [
        ["preprocess", "bert", "input_ids"], ["preprocess", "bert", "attention_mask"]]
    connect(lab, "preprocess", "features", "trees", "input__0")
    lab.shot("builder_02_connected", root)

    # -- an invalid connection: drawn red, the reason on hover ------------------------------------------
    connect(lab, "preprocess", "features", "blend", "bert")  # FP32 [8] into FP32 [1]
    label = page.locator(".nbs-eb-edge-label.invalid")
    expect(label).to_have_count(1)
    edge_id = label.get_attribute("data-edge-id")
    red = page.locator(f'.react-flow__edge[data-id="{edge_id}"] .react-flow__edge-path').evaluate(
        "e => getComputedStyle(e).stroke")
    r, g, b = (int(v) for v in red[red.index("(") + 1:red.index(")")].split(","))
    assert r > 150 and g < 100 and b < 100, red
    label.hover()
    tooltip = page.locator(".nbs-eb-edge-tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("the shapes differ")
    shown = tooltip.inner_text()
    expect(page.locator(".nbs-eb-status")).to_contain_text("invalid edge")
    lab.shot("builder_03_invalid_edge_reason", root)
    page.mouse.move(1, 1)
    expect(tooltip).to_have_count(0)  # the reason shows on hover only
    reason = lab.python_json(f"builder.edge_errors[{edge_id!r}]")
    assert shown == reason
    assert "step 'preprocess' output 'features' is FP32 [-1, 8]" in reason

    # -- delete it with the keyboard, undo, delete again -------------------------------------------------
    label.click()
    page.keyboard.press("Delete")
    expect(page.locator(".nbs-eb-edge-label.invalid")).to_have_count(0)
    assert lab.python_json("builder.edge_errors") == {}
    page.locator(".nbs-eb-canvas .react-flow__pane").click(position={"x": 1100, "y": 500})
    page.keyboard.press("Control+z")
    expect(page.locator(".nbs-eb-edge-label.invalid")).to_have_count(1)
    page.locator(".nbs-eb-edge-label.invalid").click()
    page.keyboard.press("Delete")
    expect(page.locator(".nbs-eb-edge-label.invalid")).to_have_count(0)
    expect(page.locator(".react-flow__edge")).to_have_count(3)

    connect(lab, "bert", "logits", "blend", "bert")
    connect(lab, "trees", "output__0", "blend", "trees")
    # ensemble inputs and output: drop a connection from a port on empty canvas
    expose(lab, "preprocess", "text", "target", 195, 80)
    expose(lab, "blend", "weight", "target", 740, 420)
    expose(lab, "blend", "score", "source", 1030, 140)
    expect(page.locator(".react-flow__edge")).to_have_count(8)
    expect(page.locator(".nbs-eb-edge-label.invalid")).to_have_count(0)
    page.mouse.move(1, 1)
    lab.shot("builder_04_pipeline_drawn", root)

    # -- register, run a sample, read it back in Python ---------------------------------------------------
    root.locator(".nbs-eb-register").click()
    expect(page.locator(".nbs-eb-status")).to_have_text("registered 'readability' v1")
    root.locator(".nbs-eb-run").click()
    expect(page.locator(".nbs-eb-status")).to_contain_text("sample ran in")
    expect(page.locator(".nbs-eb-timing")).to_have_count(4)
    page.mouse.move(1, 1)
    lab.shot("builder_05_sample_run", root)

    result = lab.python_json(
        "{'score': builder.sample_outputs['score'].tolist(),"
        " 'steps': sorted(builder.sample['steps']),"
        " 'same_config': builder.ensemble.to_config() == readability_in_code().to_config(),"
        " 'versions': sorted(nbserve.get('readability').versions),"
        " 'in_code': nbserve.register(readability_in_code(), name='readability_code').infer(SAMPLE)['score'].tolist(),"
        " 'bert_compute_us': builder.sample['steps']['bert']['compute_us']}")
    assert result["same_config"] is True
    assert result["versions"] == [1]  # run sample found this very config registered
    assert result["steps"] == sorted(STEPS)
    assert math.isclose(result["score"][0][0], result["in_code"][0][0], rel_tol=1e-6)
    assert result["bert_compute_us"] > 0
    # what the nodes show is what Python got
    score_text = node(page, "out:score").locator(".nbs-eb-preview").inner_text()
    assert score_text == f"= [[{result['score'][0][0]:.4g}]]"
    timing = node(page, "bert").locator(".nbs-eb-timing")
    assert math.isclose(float(timing.get_attribute("data-compute-us")), result["bert_compute_us"])
    expect(timing).to_contain_text("compute")

    # -- canvas -> code: the code panel shows the Python that builds what is drawn ---------------------
    root.locator(".nbs-eb-code-toggle").click()
    panel = root.locator(".nbs-eb-code")
    expect(panel).to_contain_text("ens.step('blend', inputs={'bert': 'logits', 'trees': 'output__0', 'weight': 'weight'}")
    assert panel.inner_text().strip() == lab.python_json("builder.code").strip()
    root.scroll_into_view_if_needed()
    lab.shot("builder_05b_code_panel", root)
    root.locator(".nbs-eb-code-toggle").click()
    expect(panel).to_have_count(0)

    # -- Python -> browser: a layout from code moves the nodes and fits them in view --------------------
    lab.run_cell("builder.layout()")
    expected = {n["id"]: [n["x"], n["y"]] for n in lab.python_json("builder.nodes")}
    for node_id, position in expected.items():
        page.wait_for_function(
            """([id, x, y]) => { const e = document.querySelector(`.react-flow__node[data-id="${id}"]`);
                 const m = new DOMMatrixReadOnly(getComputedStyle(e).transform);
                 return Math.round(m.e) === x && Math.round(m.f) === y; }""",
            arg=[node_id, *position])
    root.scroll_into_view_if_needed()
    page.mouse.move(1, 1)
    lab.shot("builder_06_layout_from_python", root)
    errors = [c for c in lab.console if c.startswith("pageerror")]
    assert errors == []


def test_code_built_ensemble_is_laid_out_and_the_palette_is_live(lab, jupyter_server):
    notebook = jupyter_server.write_notebook("from_code.ipynb", [SETUP, FROM_CODE])
    lab.open_notebook(notebook)
    lab.run_all()
    page = lab.page
    root = page.locator(".nbs-eb-root")
    expect(page.locator(".react-flow__node")).to_have_count(7)  # 2 inputs, 4 steps, 1 output
    expect(page.locator(".react-flow__edge")).to_have_count(8)
    expect(page.locator(".nbs-eb-edge-label.invalid")).to_have_count(0)
    root.scroll_into_view_if_needed()
    # fitView runs on the first frame: wait until every node is inside the canvas
    page.wait_for_function(
        """() => { const c = document.querySelector('.nbs-eb-canvas').getBoundingClientRect();
             return [...document.querySelectorAll('.react-flow__node')].every(n => {
               const b = n.getBoundingClientRect();
               return b.left >= c.left - 1 && b.right <= c.right + 1
                 && b.top >= c.top - 1 && b.bottom <= c.bottom + 1; }); }""")
    boxes = {n.get_attribute("data-id"): n.bounding_box() for n in page.locator(".react-flow__node").all()}
    ids = sorted(boxes)
    for i, a in enumerate(ids):  # no two nodes overlap
        for b in ids[i + 1:]:
            p, q = boxes[a], boxes[b]
            apart = (p["x"] + p["width"] <= q["x"] or q["x"] + q["width"] <= p["x"]
                     or p["y"] + p["height"] <= q["y"] or q["y"] + q["height"] <= p["y"])
            assert apart, (a, p, b, q)
    for edge in lab.python_json("[[e['source'], e['target']] for e in shown.edges]"):
        source, target = boxes[edge[0]], boxes[edge[1]]
        assert source["x"] + source["width"] <= target["x"], edge  # data flows left to right
    page.mouse.move(1, 1)
    lab.shot("builder_10_code_built_layout", root)

    # ensemble inputs and outputs declared with the toolbar's forms; undone with the undo button
    root.locator(".nbs-eb-add-input").click()
    form = root.locator(".nbs-eb-input-form")
    form.locator('input[placeholder="name"]').fill("extra")
    form.locator("select").select_option("FP16")
    form.locator(".nbs-eb-dims").fill("-1, 4")
    form.locator('button[type="submit"]').click()
    expect(node(page, "in:extra")).to_contain_text("FP16 [-1, 4]")
    expect(form).to_have_count(0)
    root.locator(".nbs-eb-add-output").click()
    root.locator('.nbs-eb-output-form input[placeholder="name"]').fill("spare")
    root.locator('.nbs-eb-output-form button[type="submit"]').click()
    expect(node(page, "out:spare")).to_contain_text("not connected")
    declared = lab.python_json("[shown.ensemble_inputs[-1]['dims'], shown.ensemble_inputs[-1]['dtype'], "
                               "shown.ensemble_outputs[-1]['name']]")
    assert declared == [[-1, 4], "FP16", "spare"]
    root.locator(".nbs-eb-undo").click()
    expect(node(page, "out:spare")).to_have_count(0)
    root.locator(".nbs-eb-undo").click()
    expect(node(page, "in:extra")).to_have_count(0)
    expect(root.locator(".nbs-eb-undo")).to_be_disabled()

    # the palette follows the registry, whichever cell registers
    lab.run_cell("late = nbserve.register(lambda x: x + 1, name='late_model', example=np.ones((1, 2), 'float32'))")
    expect(page.locator('.nbs-eb-palette-item[data-model="late_model"]')).to_have_count(1)
    lab.run_cell("nbserve.remove('late_model')")
    expect(page.locator('.nbs-eb-palette-item[data-model="late_model"]')).to_have_count(0)
    # a model the ensemble uses goes away: its node is marked and its edges turn invalid
    lab.run_cell("nbserve.remove('trees')")
    expect(node(page, "trees").locator(".nbs-eb-node-warning")).to_contain_text("not registered")
    expect(page.locator(".nbs-eb-edge-label.invalid")).to_have_count(2)
    page.mouse.move(1, 1)
    lab.shot("builder_11_model_removed", root)
