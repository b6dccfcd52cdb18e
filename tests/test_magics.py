"""``%load_ext nbserve``: every ``%nbserve`` subcommand and ``%%nbserve_model``, run in a real IPython
kernel through nbclient (one kernel for the module), checked by what the cells print and display.

The completion rules and the parser are also checked directly, without a kernel (fast).
"""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest

from nbserve.magics import SUBCOMMANDS, build_parser, complete

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


# ----------------------------------------------------------------------------- a kernel that runs cells
@dataclasses.dataclass
class Ran:
    """What one cell produced."""

    stdout: str
    stderr: str
    results: list[dict]  # the data of execute_result / display_data outputs, in order
    failed: bool  # the kernel answered status "error" (Run All would stop here)
    error: str  # ename: evalue of an error output (a traceback), "" when none

    @property
    def plain(self) -> str:
        return "\n".join(r.get("text/plain", "") for r in self.results)

    @property
    def html(self) -> str:
        return "\n".join(r.get("text/html", "") for r in self.results)


class Kernel:
    """One python3 kernel, started by nbclient; ``run(code)`` executes a cell in it."""

    def __init__(self, path: str) -> None:
        self.nb = nbformat.v4.new_notebook()
        self.client = nbclient.NotebookClient(self.nb, timeout=180, kernel_name="python3", allow_errors=True,
                                              resources={"metadata": {"path": path}})
        self.failed_cells: set[int] = set()
        self.client.on_cell_error = lambda cell, cell_index, execute_reply: self.failed_cells.add(cell_index)

    def run(self, code: str) -> Ran:
        cell = nbformat.v4.new_code_cell(code)
        self.nb.cells.append(cell)
        index = len(self.nb.cells) - 1
        self.client.execute_cell(cell, index)
        stdout = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
        stderr = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
        results = [dict(o.data) for o in cell.outputs if o.output_type in ("execute_result", "display_data")]
        errors = [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
        return Ran(stdout, stderr, results, index in self.failed_cells, "\n".join(errors))

    def ok(self, code: str) -> Ran:
        """Run a cell that must succeed."""
        ran = self.run(code)
        assert not ran.failed and not ran.error, f"{code!r} failed:\n{ran.stderr}{ran.error}"
        return ran

    def value(self, expression: str):
        """A Python expression evaluated in the kernel, through JSON."""
        out = self.ok(f"import json as _json\nprint(_json.dumps({expression}))").stdout
        return json.loads(out)

    def complete(self, code: str) -> list[str]:
        from jupyter_core.utils import run_sync

        kc = self.client.kc
        msg_id = kc.complete(code, len(code))
        while True:
            reply = run_sync(kc._async_get_shell_msg)(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["matches"]

    def one_line_error(self, code: str) -> str:
        """Run a cell that must fail with a single UsageError line naming the fix; return that line."""
        ran = self.run(code)
        assert ran.failed, f"{code!r} did not fail"
        assert not ran.error, f"{code!r} showed a traceback: {ran.error}"
        lines = ran.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("UsageError: "), ran.stderr
        assert "Fix: " in lines[0], lines[0]
        return lines[0]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    kernel = Kernel(str(tmp_path_factory.mktemp("magics")))
    with kernel.client.setup_kernel():
        kernel.ok("%load_ext nbserve\nimport numpy as np, nbserve")
        yield kernel
        kernel.run("%nbserve stop")


@pytest.fixture
def k(kernel):
    """The kernel with no server and an empty registry, before and after the test."""
    clean = "from nbserve.serving.server import current_server as _cs\n" \
            "_s = _cs()\n_ = _s.stop() if _s is not None else None\nnbserve.default_registry.clear()"
    kernel.ok(clean)
    yield kernel
    kernel.run(clean)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- help
def test_help_lists_every_subcommand_and_each_has_its_own(k):
    overview = k.ok("%nbserve").stdout
    assert overview.startswith("usage: %nbserve")
    for sub in SUBCOMMANDS:
        assert f"    {sub}" in overview, sub
    assert k.ok("%nbserve -h").stdout == overview
    helps = k.ok("\n".join(f"%nbserve {sub} -h" for sub in SUBCOMMANDS if sub != "help")).stdout
    for sub in SUBCOMMANDS:
        if sub != "help":
            assert f"usage: %nbserve {sub}" in helps, sub
    assert "--concurrency N,N" in helps and "--subprocess" in helps and "--no-triton" in helps
    assert k.ok("%nbserve help bench").stdout.startswith("usage: %nbserve bench")
    assert k.ok("%%nbserve_model -h\npass").stdout.startswith("usage: %%nbserve_model")
    docstring = k.ok("print(get_ipython().find_line_magic('nbserve').__doc__)").stdout
    assert "%nbserve start" in docstring and "%nbserve bench MODEL" in docstring


# ----------------------------------------------------------------------------- register / models
def test_register_a_notebook_variable_with_triton_options(k):
    k.ok("def scale(x):\n    return x * 3\nbatch = np.ones((4, 3), 'float32')")
    ran = k.ok("%nbserve register scorer scale --example batch --max-batch-size 16 --delay-us 250 "
               "--preferred-batch-size 4,8 --instances 2 --outputs scaled")
    assert ran.plain.startswith("<RegisteredModel 'scorer' v1 (python) (x:FP32[3]) -> (scaled:FP32[3])")
    config = k.value("nbserve.get('scorer').pbtxt")
    assert "max_batch_size: 16" in config and "max_queue_delay_microseconds: 250" in config
    assert "preferred_batch_size: 4" in config and "preferred_batch_size: 8" in config and "count: 2" in config
    # An expression works as VARIABLE; re-registering makes version 2.
    k.ok("%nbserve register scorer 'lambda x: x + 1' --example \"np.zeros((2, 3), 'float32')\"")
    assert k.value("nbserve.get('scorer').version") == 2
    table = k.ok("%nbserve models")
    assert "scorer" in table.plain and "1, 2" in table.plain and "<table" in table.html
    k.ok("%nbserve register words 'lambda text: np.array([len(text[0])])' --per-item --example \"np.array([['a b']])\"")
    assert k.value("nbserve.get('words').infer({'text': np.array([[b'abc']], dtype=object)})['output_0'].tolist()") \
        == [[3]]


def test_cell_magic_registers_the_function_the_cell_defines(k):
    ran = k.ok("%%nbserve_model double --example \"np.ones((2, 3), 'float32')\" --max-batch-size 8\n"
               "def helper(x):\n    return x * 2\n\ndef double(x):\n    return helper(x)\n")
    assert ran.plain.startswith("<RegisteredModel 'double' v1 (python)") and "max_batch_size=8" in ran.plain
    assert k.value("nbserve.get('double').infer({'x': np.ones((1, 3), 'float32')})['output_0'].tolist()") \
        == [[2.0, 2.0, 2.0]]
    assert k.value("double(np.ones(1)).tolist()") == [2.0]  # the cell ran in the notebook's namespace
    # No function called NAME: the last one defined.
    k.ok("%%nbserve_model last --example \"np.ones((2, 3), 'float32')\"\n"
         "def first(x):\n    return x\n\ndef second(x):\n    return x - 1\n")
    assert k.value("nbserve.get('last').infer({'x': np.ones((1, 3), 'float32')})['output_0'].tolist()") \
        == [[0.0, 0.0, 0.0]]
    # --function picks any object the cell assigns (here an instance).
    k.ok("%%nbserve_model shifted --function model --example \"np.ones((2, 3), 'float32')\"\n"
         "class Shift:\n    def __call__(self, x):\n        return x + 10\nmodel = Shift()\n")
    assert k.value("nbserve.get('shifted').infer({'x': np.ones((1, 3), 'float32')})['output_0'].tolist()") \
        == [[11.0, 11.0, 11.0]]


def test_cell_magic_mistakes(k):
    line = k.one_line_error("%%nbserve_model nothing\nx = 1\n")
    assert "defines no function" in line
    ran = k.run("%%nbserve_model broken\ndef broken(x):\n    return x\nraise ValueError('boom')\n")
    assert ran.failed and "ValueError: boom" in ran.error  # the cell's own error, as usual
    assert "nothing was registered" in ran.stderr
    assert k.value("'broken' in nbserve.default_registry") is False
    line = k.one_line_error("%%nbserve_model bad --example \"np.ones((2, 3), 'float32')\" --max-batch-size 4 "
                            "--preferred-batch-size 16\ndef bad(x):\n    return x\n")
    assert "preferred_batch_size" in line and "max_batch_size" in line


# ----------------------------------------------------------------------------- start / status / stop
def test_start_infer_with_tritonclient_status_stop(k):
    k.ok("%nbserve register double 'lambda x: x * 2' --example \"np.ones((2, 3), 'float32')\"")
    started = k.ok("server = %nbserve start\nserver")
    assert "<nbserve.Server running (thread)" in started.plain and "double" in started.plain
    k.ok("import tritonclient.http as httpclient\n"
         "client = httpclient.InferenceServerClient(server.http_address)\n"
         "x = httpclient.InferInput('x', [1, 3], 'FP32'); x.set_data_from_numpy(np.ones((1, 3), 'float32'))\n"
         "answer = client.infer('double', [x]).as_numpy('output_0').tolist()")
    assert k.value("answer") == [[2.0, 2.0, 2.0]]
    status = k.ok("%nbserve status")
    assert status.plain.startswith("nbserve server running (thread): http 127.0.0.1:")
    assert status.plain.splitlines()[-1].split() == ["double", "1", "1", "0", "0"]
    assert "<td>double</td><td>1</td><td>1</td><td>0</td><td>0</td>" in status.html
    assert k.ok("%nbserve stop").stdout.startswith("nbserve: stopped the thread server at 127.0.0.1:")
    assert k.ok("%nbserve stop").stdout == "nbserve: no server is running\n"
    assert "no server is running; start one with %nbserve start" in k.ok("%nbserve status").stdout
    assert k.value("server.is_running") is False


def test_start_twice_replaces_and_subprocess_mode_takes_ports(k):
    k.ok("%nbserve register double 'lambda x: x * 2' --example \"np.ones((2, 3), 'float32')\"")
    k.ok("first = %nbserve start --no-grpc --no-metrics")
    assert k.value("[first.grpc_port, first.metrics_port]") == [None, None]
    port = _free_port()
    ran = k.ok(f"second = %nbserve start --subprocess --http-port {port}\nsecond")
    assert ran.plain.startswith("<nbserve.SubprocessServer running")
    assert k.value("[first.is_running, second.is_running, second.http_port]") == [False, True, port]
    k.ok("import tritonclient.grpc as grpcclient\n"
         "c = grpcclient.InferenceServerClient(second.grpc_address)\n"
         "gx = grpcclient.InferInput('x', [1, 3], 'FP32'); gx.set_data_from_numpy(np.full((1, 3), 2, 'float32'))\n"
         "sub_answer = c.infer('double', [gx]).as_numpy('output_0').tolist()")
    assert k.value("sub_answer") == [[4.0, 4.0, 4.0]]
    status = k.ok("%nbserve status").plain.splitlines()
    assert status[0].startswith(f"nbserve server running (subprocess): http 127.0.0.1:{port}, grpc ")
    assert status[3].split() == ["double", "1", "1", "0", "-"]  # asked from the child's statistics
    assert k.ok("%nbserve stop").stdout == f"nbserve: stopped the subprocess server at 127.0.0.1:{port}\n"
    assert k.value("second.process.poll() is not None") is True  # the child is gone
    line = k.one_line_error("%nbserve start --subprocess --no-grpc")
    assert "in-kernel server only" in line


# ----------------------------------------------------------------------------- bench / sweep
@pytest.mark.slow
def test_bench_shows_a_live_plot_and_returns_the_run(k):
    k.ok("%nbserve register double 'lambda x: x * 2' --example \"np.ones((2, 3), 'float32')\" --max-batch-size 8")
    k.ok("%nbserve start --no-grpc --no-metrics")
    ran = k.ok("run = %nbserve bench double -c 1,4 -p 150 --warmup 0.05 -r 3\nrun")
    widgets = [r for r in ran.results if "application/vnd.jupyter.widget-view+json" in r]
    assert widgets, "no live plot was displayed"
    assert [row["concurrency"] for row in k.value("run.rows")] == [1, 4]
    assert all(row["infer_per_s"] > 0 for row in k.value("run.rows"))
    assert "<th>Concurrency</th>" in ran.html  # the run's own table is the cell's result
    quiet = k.ok("%nbserve bench double -c 2 -p 150 --warmup 0.05 -r 2 --no-live -i http")
    assert not [r for r in quiet.results if "application/vnd.jupyter.widget-view+json" in r]


@pytest.mark.slow
def test_sweep_recommends_and_applies(k):
    k.ok("%nbserve register double 'lambda x: x * 2' --example \"np.ones((2, 3), 'float32')\" --max-batch-size 8")
    ran = k.ok("result = %nbserve sweep double --max-batch-size 2,8 --delay-us 0,200 -c 4 -p 150 --warmup 0.05 "
               "--budget-ms 1000 --apply --no-live")
    assert "at concurrency 4" in ran.stdout and "the most throughput within the 1000.0 ms budget" in ran.stdout
    best = k.value("result.best")
    assert f"nbserve: applied to 'double' v1: {best['config']}" in ran.stdout
    assert len(k.value("result.rows")) == 4
    assert k.value("nbserve.get('double').config.max_batch_size") == best["max_batch_size"]
    assert k.value("nbserve.get('double').config.dynamic_batching.max_queue_delay_microseconds") == \
        best["max_queue_delay_microseconds"]


# ----------------------------------------------------------------------------- export / validate / parity
@pytest.mark.slow
def test_export_validate_parity(k, tmp_path):
    k.ok("%nbserve register double 'lambda x: x * 2' --example \"np.ones((2, 3), 'float32')\"")
    k.ok("%nbserve register plus_one 'lambda x: x + 1' --example \"np.ones((2, 3), 'float32')\"")
    repo = tmp_path / "model_repository"
    ran = k.ok(f"report = %nbserve export {repo} --models double,plus_one\nreport")
    assert ran.plain.startswith(f"Exported 2 models to {repo}")
    assert (repo / "double" / "config.pbtxt").is_file() and (repo / "kserve.yaml").is_file()
    assert k.ok(f"%nbserve validate {repo}").plain.startswith("OK: 0 errors")
    (repo / "plus_one" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: lots\n')
    broken = k.ok(f"%nbserve validate {repo}")  # a report, not an error: the notebook shows what to fix
    assert "FAILED: 1 error" in broken.plain and "plus_one/config.pbtxt:2: error" in broken.plain
    k.ok(f"%nbserve export {repo} --models double")
    parity = k.ok(f"%nbserve parity {repo} --no-triton --repeats 1")
    assert parity.plain.startswith(f"Parity of {repo} (agree") and "subprocess" in parity.plain


# ----------------------------------------------------------------------------- mistakes: one line each
def test_mistakes_show_one_line_with_the_fix(k):
    k.ok("%nbserve register double 'lambda x: x * 2' --example \"np.ones((2, 3), 'float32')\"")
    assert "did you mean %nbserve start?" in k.one_line_error("%nbserve strat")
    assert "no server is running. Fix: start one with %nbserve start" in k.one_line_error("%nbserve bench double")
    k.ok("%nbserve start --no-grpc --no-metrics")
    assert "no model 'doubel' is registered. Fix: did you mean 'double'?" in k.one_line_error("%nbserve bench doubel")
    assert "argument -c/--concurrency: expected comma-separated numbers like 1,4,16, got 'many'" in \
        k.one_line_error("%nbserve bench double -c many")
    assert "the following arguments are required: PATH" in k.one_line_error("%nbserve export")
    assert "unrecognized arguments: --colour" in k.one_line_error("%nbserve models --colour")
    assert "there is no variable 'modle' in this notebook" in k.one_line_error("%nbserve register m modle")
    k.ok("model = lambda x: x")
    assert "did you mean 'model'?" in k.one_line_error("%nbserve register m modl")
    assert "close every quote" in k.one_line_error("%nbserve register m 'lambda x")
    # nbserve's own errors (here a Triton rule) keep their message and fix, on one line.
    line = k.one_line_error("%nbserve register m model --example \"np.ones((2, 3), 'float32')\" --max-batch-size -1")
    assert line.startswith("UsageError: %nbserve register: model 'm'") and "max_batch_size" in line
    k.ok("%nbserve stop")


# ----------------------------------------------------------------------------- completion
def test_tab_completes_subcommands_model_names_and_options(k):
    k.ok("%nbserve register scorer 'lambda x: x' --example \"np.ones((2, 3), 'float32')\"")
    k.ok("%nbserve register scaler 'lambda x: x' --example \"np.ones((2, 3), 'float32')\"")
    k.ok("my_model = lambda x: x")
    assert k.complete("%nbserve be") == ["bench"]
    assert set(SUBCOMMANDS) <= set(k.complete("%nbserve "))
    assert k.complete("%nbserve bench sc") == ["scaler", "scorer"]
    assert k.complete("run = %nbserve sweep scor") == ["scorer"]
    assert k.complete("%nbserve export repo --models scorer,sca") == ["scaler"]
    assert k.complete("%nbserve bench scorer --conc") == ["--concurrency"]
    assert "my_model" in k.complete("%nbserve register new my_")
    assert k.complete("%%nbserve_model sco") == ["scorer"]


# ----------------------------------------------------------------------------- unload / reload
def test_unload_and_reload(k):
    k.ok("%unload_ext nbserve")
    gone = k.run("%nbserve models")
    assert gone.failed and "Line magic function `%nbserve` not found" in gone.stderr
    assert k.value("sum(getattr(m, '_nbserve', False) for m in get_ipython().Completer.custom_matchers)") == 0
    assert "bench" not in k.complete("%nbserve be")
    k.ok("%load_ext nbserve")
    k.ok("%reload_ext nbserve")
    k.ok("%load_ext nbserve")  # already loaded: nothing doubles
    assert k.value("sum(getattr(m, '_nbserve', False) for m in get_ipython().Completer.custom_matchers)") == 1
    k.ok("%nbserve register again 'lambda x: x' --example \"np.ones((2, 3), 'float32')\"")
    assert "again" in k.ok("%nbserve models").plain
    assert k.complete("%nbserve bench ag") == ["again"]
    cell = k.ok("%%nbserve_model cell_again --example \"np.ones((2, 3), 'float32')\"\ndef f(x):\n    return x\n")
    assert "cell_again" in cell.plain


# ----------------------------------------------------------------------------- without a kernel
@pytest.mark.parametrize("line, expected", [
    ("%nbserve ", list(SUBCOMMANDS)),
    ("%nbserve st", ["start", "stop", "status"]),
    ("%nbserve help v", ["validate"]),
    ("%nbserve bench m -", None),  # a bare "-": short options are not offered, long ones are
    ("%nbserve bench m --pro", ["--protocol"]),
    ("%nbserve bench m -c ", None),  # an option's value: not a model name
    ("%nbserve export ", None),  # a path: IPython's file completer answers
    ("%nbserve validate repo ", None),
    ("%nbserve start --sub", ["--subprocess"]),
    ("%nbserve frobnicate ", None),
    ("print('%nbserve')", None),
    ("%%nbserve_model f --fun", ["--function"]),
    ("%nbserve_model ", None),
])
def test_complete_rules(line, expected):
    got = complete(line)
    if line.endswith(" -"):
        assert "--concurrency" in got and all(o.startswith("--") for o in got)
    else:
        assert got == expected


def test_model_names_complete_from_the_registry(clean_default_registry):
    import numpy as np

    clean_default_registry.register(lambda x: x, name="alpha", example=np.ones((1, 2), "float32"))
    clean_default_registry.register(lambda x: x, name="beta", example=np.ones((1, 2), "float32"))
    assert complete("%nbserve bench ") == ["alpha", "beta"]
    assert complete("%nbserve sweep a") == ["alpha"]
    assert complete("%nbserve bench alpha ") is None  # one model per bench
    assert complete("%nbserve bench --no-live al") == ["alpha"]  # a flag takes no value
    assert complete("%nbserve register alpha ", ["alpha_model", "_hidden", "beta"]) == ["alpha_model", "beta"]
    assert complete("%nbserve register alpha al", ["alpha_model"]) == ["alpha_model"]
    assert complete("%nbserve export out --models alpha,") == ["alpha", "beta"]


def test_every_subcommand_has_help_text():
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command")
    assert sorted(choices.choices) == sorted(SUBCOMMANDS)
    for action in choices._choices_actions:
        assert action.help, action.dest
