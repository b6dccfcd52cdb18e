"""EnsembleBuilder without a browser: the canvas's commands, edge checks, undo, the live palette,
code <-> canvas, and the readability pipeline built twice (in code and on the canvas)."""

from __future__ import annotations

import itertools
import subprocess
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import traitlets

import nbserve
from nbserve.errors import ConfigError, ModelNotFound
from nbserve.registry import Registry
from nbserve.widgets import EnsembleBuilder
from tiny_readability import SAMPLE, readability_in_code

REPO = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)


def command(builder: EnsembleBuilder, cmd: str, **args) -> dict:
    """Send one command the way the browser does and return the one reply it gets."""
    request = f"test:{next(_ids)}"
    before = len(builder.comm.replies())
    builder.comm.from_browser({"id": request, "cmd": cmd, "args": args})
    replies = builder.comm.replies()[before:]
    assert len(replies) == 1, replies
    assert replies[0]["reply_to"] == request
    return replies[0]


def draw_readability(builder: EnsembleBuilder) -> None:
    """What a user does on the canvas, as the browser's commands, in the order the browser test drags."""
    for x, model in enumerate(["preprocess", "bert", "trees", "blend"]):
        assert command(builder, "add_step", model=model, x=300 * x, y=100)["ok"]
    # Dropping a connection from an input port on empty canvas declares an ensemble input.
    assert command(builder, "expose_input", node="preprocess", port="text", x=-200, y=100)["node"] == "in:text"
    assert command(builder, "expose_input", node="blend", port="weight", x=600, y=400)["node"] == "in:weight"
    for source, sport, target, tport in [
        ("preprocess", "input_ids", "bert", "input_ids"),
        ("preprocess", "attention_mask", "bert", "attention_mask"),
        ("preprocess", "features", "trees", "input__0"),
        ("bert", "logits", "blend", "bert"),
        ("trees", "output__0", "blend", "trees"),
    ]:
        reply = command(builder, "connect", source=source, source_port=sport, target=target, target_port=tport)
        assert reply["ok"] and "warning" not in reply, reply
    assert command(builder, "add_output", name="score", x=1300, y=100)["ok"]
    reply = command(builder, "connect", source="blend", source_port="score", target="out:score", target_port="score")
    assert reply["ok"]


@pytest.fixture
def builder(readability_registry):
    b = EnsembleBuilder(registry=readability_registry, name="readability")
    yield b
    b.close()


@pytest.fixture
def small_registry():
    reg = Registry()
    reg.register(lambda x: x * 2, name="double", example=np.ones((1, 2), "float32"))
    reg.register(lambda x: (x > 0).astype("int64"), name="positive", example=np.ones((1, 2), "float32"))
    yield reg
    reg.clear()


# ----------------------------------------------------------------------------- the done criterion
def test_readability_drawn_on_the_canvas_equals_the_code(builder, readability_registry):
    draw_readability(builder)
    assert builder.edge_errors == {}
    code = readability_in_code()
    assert builder.ensemble.to_config(readability_registry) == code.to_config(readability_registry)

    # Register the code version; the builder finds exactly its config registered and runs it as is.
    registered = readability_registry.register(code)
    result = builder.run_sample(SAMPLE)
    assert readability_registry.get("readability").versions.keys() == {registered.version}
    direct = registered.infer(SAMPLE)
    np.testing.assert_allclose(result["score"], direct["score"], rtol=1e-6)
    # Per-step outputs and times land on the nodes.
    assert set(builder.sample["steps"]) == {"preprocess", "bert", "trees", "blend"}
    for step in builder.sample["steps"].values():
        assert step["compute_us"] > 0 and step["queue_us"] >= 0
    assert builder.sample["steps"]["blend"]["outputs"]["score"]["shape"] == [1, 1]
    assert builder.sample["outputs"]["score"]["dtype"] == "FP32"
    np.testing.assert_allclose(builder.sample_outputs["score"], direct["score"], rtol=1e-6)


def test_readability_from_code_is_laid_out_and_round_trips(readability_registry):
    code = readability_in_code()
    b = EnsembleBuilder(registry=readability_registry, ensemble=code)
    try:
        assert b.edge_errors == {}
        assert len(b.edges) == 8
        assert b.ensemble.to_config(readability_registry) == code.to_config(readability_registry)
        x = {n["id"]: n["x"] for n in b.nodes}
        x.update({f"in:{t['name']}": t["x"] for t in b.ensemble_inputs})
        x.update({f"out:{t['name']}": t["x"] for t in b.ensemble_outputs})
        # automatic layout: every edge points left to right, columns in data-flow order
        for e in b.edges:
            assert x[e["source"]] < x[e["target"]], e
        assert x["in:text"] < x["preprocess"] < x["bert"] == x["trees"] < x["blend"] < x["out:score"]
        assert x["in:weight"] == x["bert"]  # an input sits just left of its first reader
        # the output's dtype and dims come from the step that writes it
        output = b.ensemble_outputs[0]
        assert (output["name"], output["dtype"], output["dims"]) == ("score", "FP32", [1])
    finally:
        b.close()


def test_code_panel_builds_the_same_ensemble(builder, readability_registry):
    draw_readability(builder)
    namespace: dict = {}
    exec(builder.code.replace("nbserve.register(ens)", ""), namespace)
    assert namespace["ens"].to_config(readability_registry) == builder.ensemble.to_config(readability_registry)


def test_code_edits_reach_the_canvas(builder, readability_registry):
    draw_readability(builder)
    ens = builder.ensemble
    ens.steps[3].inputs["weight"] = "logits"  # edited in code: blend reads bert's score as its weight
    builder.ensemble = ens
    weight_edges = [e for e in builder.edges if e["target"] == "blend" and e["target_port"] == "weight"]
    assert [(e["source"], e["source_port"]) for e in weight_edges] == [("bert", "logits")]
    assert builder.undo()  # and undo brings the drawn version back
    assert builder.ensemble.to_config(readability_registry) == readability_in_code().to_config(readability_registry)


# ----------------------------------------------------------------------------- edge checks
def test_a_dtype_mismatch_is_drawn_invalid_with_the_reason(builder):
    draw_readability(builder)
    # features (FP32 [8]) into a second bert step's input_ids (INT64 [16])
    command(builder, "add_step", model="bert", x=0, y=400)
    reply = command(builder, "connect", source="preprocess", source_port="features", target="bert*2",
                    target_port="input_ids")
    assert reply["ok"] and reply["warning"]
    edge = reply["edge"]
    reason = builder.edge_errors[edge]
    assert "FP32" in reason and "INT64" in reason and "data types differ" in reason
    assert reason in reply["message"]
    assert edge in {e["id"] for e in builder.edges}  # still drawn (red)
    with pytest.raises(ConfigError, match=f"edge {edge} from preprocess.features to bert\\*2.input_ids is invalid"):
        builder.ensemble  # noqa: B018
    assert "1 invalid edge left out" in builder.code


def test_an_input_connected_twice_is_invalid(builder):
    draw_readability(builder)
    edge = builder.connect("in:weight", "weight", "blend", "bert")
    assert "already connected" in builder.edge_errors[edge]
    builder.remove(edge)
    assert builder.edge_errors == {}


def test_a_cycle_is_invalid(small_registry):
    b = EnsembleBuilder(registry=small_registry)
    try:
        b.add_step("double")
        b.add_step("double")
        assert [n["id"] for n in b.nodes] == ["double", "double*2"]
        first = b.connect("double", "output_0", "double*2", "x")
        back = b.connect("double*2", "output_0", "double", "x")
        assert first not in b.edge_errors
        assert "cycle" in b.edge_errors[back]
    finally:
        b.close()


def test_batching_mismatch_and_unknown_ports(small_registry):
    small_registry.register(lambda x: x, name="whole", example=np.ones((2,), "float32"), max_batch_size=0)
    b = EnsembleBuilder(registry=small_registry)
    try:
        b.add_step("double")
        b.add_step("whole")
        edge = b.connect("double", "output_0", "whole", "x")
        assert "batches" in b.edge_errors[edge]
        with pytest.raises(ConfigError, match="has no output port 'nope'"):
            b.connect("double", "nope", "whole", "x")
        with pytest.raises(ConfigError, match="has no input port"):
            b.connect("double", "output_0", "double", "output_0")
        with pytest.raises(ConfigError, match="no node 'ghost'"):
            b.connect("ghost", "y", "whole", "x")
        with pytest.raises(ModelNotFound, match="did you mean 'double'"):
            b.add_step("dubble")
    finally:
        b.close()


def test_an_ensemble_input_cannot_be_an_output_directly(small_registry):
    b = EnsembleBuilder(registry=small_registry)
    try:
        b.add_input("x", "FP32", [2])
        b.add_output("y")
        edge = b.connect("in:x", "x", "out:y", "y")
        assert "through steps" in b.edge_errors[edge]
    finally:
        b.close()


# ----------------------------------------------------------------------------- the registry, live
def test_palette_follows_the_registry_from_any_thread(small_registry):
    b = EnsembleBuilder(registry=small_registry)
    try:
        assert [p["name"] for p in b.palette] == ["double", "positive"]
        assert b.palette[0]["inputs"] == [{"name": "x", "dtype": "FP32", "dims": [2]}]
        worker = threading.Thread(target=small_registry.register, args=(lambda x: x - 1,),
                                  kwargs={"name": "dec", "example": np.ones((1, 2), "float32")})
        worker.start()
        worker.join(30)
        assert [p["name"] for p in b.palette] == ["dec", "double", "positive"]
        small_registry.remove("positive")
        assert [p["name"] for p in b.palette] == ["dec", "double"]
        b.close()
        small_registry.remove("dec")  # after close the builder no longer listens
        assert [p["name"] for p in b.palette] == ["dec", "double"]
    finally:
        b.close()


def test_registered_ensembles_stay_out_of_the_palette(builder, readability_registry):
    draw_readability(builder)
    builder.register()
    assert "readability" in readability_registry
    assert "readability" not in [p["name"] for p in builder.palette]


def test_reregistered_and_removed_models_mark_their_edges(small_registry):
    b = EnsembleBuilder(registry=small_registry)
    try:
        b.add_input("x", "FP32", [2])
        b.add_step("double")
        edge = b.connect("in:x", "x", "double", "x")
        assert b.edge_errors == {}
        # a new version with another signature: the edge is checked again
        small_registry.register(lambda x: x * 2, name="double", example=np.ones((1, 3), "float32"))
        assert "shapes differ" in b.edge_errors[edge]
        assert b.nodes[0]["inputs"] == [{"name": "x", "dtype": "FP32", "dims": [3]}]
        small_registry.remove("double")
        assert b.nodes[0]["missing"] is True
        assert "not registered" in b.edge_errors[edge]
        assert b.nodes[0]["inputs"][0]["name"] == "x"  # the last known ports stay drawn
    finally:
        b.close()


# ----------------------------------------------------------------------------- undo, delete, layout
def test_every_action_can_be_undone(builder):
    states = []

    def snapshot():
        return (builder.nodes, builder.edges, builder.ensemble_inputs, builder.ensemble_outputs, builder.name)

    states.append(snapshot())
    builder.add_step("preprocess")
    states.append(snapshot())
    builder.expose_input("preprocess", "text")
    states.append(snapshot())
    builder.expose_output("preprocess", "features")
    states.append(snapshot())
    builder.move("preprocess", 500, 20)
    states.append(snapshot())
    builder.layout()
    states.append(snapshot())
    builder.name = "renamed"
    states.append(snapshot())
    builder.remove("preprocess")
    assert builder.edges == [] and builder.nodes == []
    assert builder.can_undo
    while states:
        assert builder.undo()
        assert snapshot() == states.pop()
    assert not builder.undo()
    assert not builder.can_undo


def test_delete_and_undo_as_the_browser_sends_them(builder):
    draw_readability(builder)
    edges_before = builder.edges
    reply = command(builder, "delete", nodes=["bert"], edges=["e7"])
    assert reply["ok"]
    assert set(reply["removed"]) == {"bert", "e7", "e3", "e4", "e6"}  # bert's edges go with it
    assert "bert" not in {n["id"] for n in builder.nodes}
    assert command(builder, "undo")["message"] == "undid the last change"
    assert builder.edges == edges_before
    reply = command(builder, "delete", nodes=["nope"])
    assert not reply["ok"] and "no node 'nope'" in reply["error"]
    assert builder.edges == edges_before  # nothing was half deleted


def test_moves_keep_the_sample_but_edits_clear_it(builder, readability_registry):
    draw_readability(builder)
    builder.run_sample(SAMPLE)
    command(builder, "move", moves=[{"id": "bert", "x": 10, "y": 20}, {"id": "in:text", "x": -5, "y": 0}])
    assert builder.sample["ok"]
    bert = next(n for n in builder.nodes if n["id"] == "bert")
    assert (bert["x"], bert["y"]) == (10, 20)
    builder.add_output("bert_score")
    assert builder.sample == {} and builder.sample_outputs is None


# ----------------------------------------------------------------------------- commands always answer
def test_every_command_gets_a_reply(builder):
    reply = command(builder, "bogus")
    assert reply["ok"] is False and "unknown builder command 'bogus'" in reply["error"]
    reply = command(builder, "add_step")  # missing argument
    assert not reply["ok"] and "TypeError" in reply["error"]
    reply = command(builder, "add_input", name="", dtype="FP32", dims="1")
    assert not reply["ok"] and "needs a name" in reply["error"]
    reply = command(builder, "add_input", name="w", dtype="FP33", dims="1")
    assert not reply["ok"] and "FP33" in reply["error"]
    reply = command(builder, "register")
    assert not reply["ok"] and "needs at least one input" in reply["error"]
    reply = command(builder, "run_sample")
    assert not reply["ok"]
    assert command(builder, "set_name", name="bad/name")["ok"] is False
    assert builder.name == "readability"
    # malformed messages (no command) are not ours to answer
    before = len(builder.comm.replies())
    builder.comm.from_browser({"something": "else"})
    assert len(builder.comm.replies()) == before


def test_register_and_run_sample_commands(builder, readability_registry):
    draw_readability(builder)
    reply = command(builder, "register")
    assert reply == {"reply_to": reply["reply_to"], "ok": True, "message": "registered 'readability' v1", "version": 1}
    reply = command(builder, "run_sample")
    assert reply["ok"] and reply["outputs"] == ["score"]
    assert reply["message"].startswith("sample ran in ") and "score = [[" in reply["message"]
    assert readability_registry.get("readability").version == 1  # unchanged config: not registered again
    # the made-up request: BYTES text and 0.5 weights
    assert builder.sample["inputs"]["text"]["text"] == "['The quick brown fox jumps over the lazy dog.']"
    assert builder.sample["inputs"]["weight"] == {"dtype": "FP32", "shape": [1, 1], "text": "[[0.5]]"}


def test_a_failing_step_fails_the_sample_with_its_name(small_registry):
    def broken(x):
        if np.any(x == 0.5):  # the made-up sample request
            raise ValueError("no good")
        return x

    small_registry.register(broken, name="broken", example=np.ones((1, 2), "float32"),
                            outputs=[nbserve.TensorSpec("y", [2], "FP32")])
    b = EnsembleBuilder(registry=small_registry, name="fails")
    try:
        b.add_step("broken")
        b.expose_input("broken", "x")
        b.expose_output("broken", "y")
        reply = command(b, "run_sample")
        assert not reply["ok"] and "step 'broken' failed" in reply["error"] and "no good" in reply["error"]
        assert b.sample == {"ok": False, "error": reply["error"]}
    finally:
        b.close()


# ----------------------------------------------------------------------------- traitlets and sync
def test_state_traitlets_are_read_only(builder):
    for trait, value in [("nodes", []), ("edges", []), ("palette", []), ("edge_errors", {}), ("code", "")]:
        with pytest.raises(traitlets.TraitError, match="read-only"):
            setattr(builder, trait, value)
    with pytest.raises(ConfigError, match="ensemble name"):
        builder.name = "a/b"
    assert builder.name == "readability"


def test_one_action_is_one_state_message(builder):
    before = len(builder.comm.updates())
    builder.add_step("bert")
    updates = builder.comm.updates()[before:]
    assert len(updates) == 1
    assert [n["id"] for n in updates[0]["nodes"]] == ["bert"]


def test_the_widget_ships_its_built_bundle():
    static = REPO / "nbserve" / "widgets" / "static"
    js = (static / "ensemble_builder.js").read_text()
    assert "export" in js and "nbs-eb-root" in js and "msg:custom" in js
    css = (static / "ensemble_builder.css").read_text()
    assert ".react-flow__edge" in css and ".nbs-eb-edge-tooltip" in css
    assert str(EnsembleBuilder._esm) == js  # what anywidget sends to the browser
    assert str(EnsembleBuilder._css) == css


@pytest.mark.slow
def test_the_committed_bundle_is_built_from_the_sources(tmp_path):
    if not (shutil.which("node") and (REPO / "widgets" / "node_modules" / "esbuild").is_dir()):
        pytest.skip("needs node and `npm ci` in widgets/")
    subprocess.run(["node", "build.mjs", str(tmp_path)], cwd=REPO / "widgets", check=True, capture_output=True,
                   timeout=120)
    for name in ("ensemble_builder.js", "ensemble_builder.css"):
        committed = (REPO / "nbserve" / "widgets" / "static" / name).read_bytes()
        assert (tmp_path / name).read_bytes() == committed, f"{name} is stale: cd widgets && node build.mjs"
