"""``nbserve demo``: the quickstart, headless. What it prints is what a notebook user would see."""

from __future__ import annotations

import re
import threading

from nbserve.cli import main


def test_demo_prints_each_step_of_the_quickstart(tmp_path, capsys):
    out = tmp_path / "repo"
    assert main(["demo", "--frameworks", "python", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    titles = re.findall(r"^\[\d\] (.*)$", printed, flags=re.M)
    assert [t.split(" (")[0] for t in titles] == [
        "register a tiny model per framework", "the models and their Triton config", "serve them in this process",
        "a sample inference with tritonclient over HTTP", "benchmark 'text_features' over HTTP",
        f"export the production repository to {out}", "read the export back and run each sample through it"]
    assert "text_features   1" in printed or "text_features  1" in printed  # the models table
    assert re.search(r"KServe v2 over HTTP at http://127\.0\.0\.1:\d+ and gRPC at grpc://127\.0\.0\.1:\d+", printed)
    assert "client.infer('text_features', {'text': [['Hello World'], ['Grüße  aus Köln']]})" in printed
    assert "normalized = [['hello world'], ['grüße aus köln']]" in printed
    assert "the same as calling the live object in this process" in printed
    table = printed[printed.index("Concurrency  Infer/s"):]
    levels = [line.split()[0] for line in table.splitlines()[2:4]]
    assert levels == ["1", "4"]
    assert f"Exported 1 model to {out}" in printed and "docker run" in printed
    assert f"nbserve.validate('{out}'): OK: 0 errors" in printed
    assert (out / "kserve.yaml").is_file() and (out / "text_features" / "config.pbtxt").is_file()
    assert printed.rstrip().splitlines()[-1].startswith("all outputs match")
    assert not [t for t in threading.enumerate() if t.name == "nbserve-server"]  # the demo's server is gone
