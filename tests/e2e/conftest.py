"""A real JupyterLab server and a real headless Chromium (Debian's, driven by Playwright) for widget tests.

No ``playwright install``: the system browser is used through ``executable_path`` (``CHROMIUM_PATH``
overrides /usr/bin/chromium). Tests skip when Playwright, JupyterLab or the browser is missing.

Fixtures:
    jupyter_server  (session)  JupyterLab on 127.0.0.1:<free port>, isolated config, torn down by PID
    browser         (module)   headless Chromium with network-closed flags (closed after each module)
    lab             (function) a fresh browser context and page, with helpers to open a notebook,
                               run cells, read their output, drag with the real mouse, take screenshots
    shots_dir       (session)  where screenshots go: $NBSERVE_SHOTS, else <repo>/artifacts/screenshots

JupyterLab runs with ``expose_app_in_browser`` so that tests run cells through ``window.jupyterapp``
and wait on the promise of the command (no fixed sleeps); everything a widget does is driven by real
mouse and keyboard events on the rendered page.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
]
# Generous: these run on loaded 2-core machines, where a kernel start alone can take 10 s or more.
ACTION_TIMEOUT_MS = 120_000
SERVER_START_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, timeout: float = 5.0):
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
        return response.status, (json.loads(body) if body else None)


class JupyterServer:
    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path) -> None:
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log
        self.base = f"http://127.0.0.1:{port}"

    def api(self, method: str, path: str, timeout: float = 5.0):
        sep = "&" if "?" in path else "?"
        return _http(method, f"{self.base}{path}{sep}token={self.token}", timeout)

    def shutdown_all_sessions(self) -> None:
        try:
            _, sessions = self.api("GET", "/api/sessions")
            for session in sessions or []:
                self.api("DELETE", f"/api/sessions/{session['id']}", timeout=60)
        except OSError:
            pass  # the server is going down anyway

    def write_notebook(self, name: str, cells: list[str]) -> str:
        import nbformat

        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
        nbformat.write(nb, self.root / name)
        return name


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory):
    pytest.importorskip("jupyterlab", reason='needs the notebook extra: pip install "nbserve[notebook]"')
    pytest.importorskip("nbformat")
    root = tmp_path_factory.mktemp("jlroot")
    cfg = tmp_path_factory.mktemp("jlcfg")
    # No "receive Jupyter news?" toast over the notebook (and no network call for it).
    (cfg / "config" / "labconfig").mkdir(parents=True)
    (cfg / "config" / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # Notebook virtualisation off: every cell and output stays in the DOM.
    settings = cfg / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))

    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(cfg / "config"),
        JUPYTER_RUNTIME_DIR=str(cfg / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(cfg / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(cfg / "workspaces"),
        IPYTHONDIR=str(cfg / "ipython"),
    )
    # The python3 kernel runs this interpreter, where nbserve is installed.
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        "--LabApp.extension_manager=readonly",
    ]
    log = cfg / "jupyterlab.log"
    log_file = open(log, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)  # our own process group: teardown by PID only
    server = JupyterServer(root, port, token, proc, log)
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if proc.poll() is not None:
            log_file.close()
            raise RuntimeError(f"JupyterLab exited early:\n{log.read_text()[-3000:]}")
        try:
            if server.api("GET", "/api/status", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log_file.close()
            raise RuntimeError(f"JupyterLab not ready after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)  # polling a condition with a deadline
    yield server
    server.shutdown_all_sessions()
    try:
        server.api("POST", "/api/shutdown", timeout=10)
    except OSError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log_file.close()


@pytest.fixture(scope="session")
def shots_dir():
    path = Path(os.environ.get("NBSERVE_SHOTS") or REPO / "artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# Module scope, not session: while Playwright's sync API is open it keeps an asyncio loop running in
# the main thread, so every later test that runs a loop there (asyncio.run, run_until_complete:
# tests/serving/, nbclient) would fail with "Cannot run the event loop while another loop is running".
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason='needs the test extra: pip install "nbserve[test]"')
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)")
    sync_api.expect.set_options(timeout=ACTION_TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Lab:
    """Drives one JupyterLab tab through ``window.jupyterapp`` and the real mouse and keyboard."""

    def __init__(self, page, server: JupyterServer, shots: Path) -> None:
        self.page, self.server, self.shots = page, server, shots
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def open_notebook(self, name: str) -> None:
        """Open a notebook (ignoring any saved workspace) and wait until its kernel is idle."""
        self.page.goto(f"{self.server.base}/lab/tree/{name}?reset&token={self.server.token}")
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=ACTION_TIMEOUT_MS)
        self.page.wait_for_function(
            """(name) => { const w = window.jupyterapp.shell.currentWidget;
                 const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                 return !!(w && w.context && w.context.path.endsWith(name) && k
                   && k.connectionStatus === 'connected' && k.status === 'idle'); }""",
            arg=name, timeout=ACTION_TIMEOUT_MS)
        self.page.locator(".jp-Notebook").first.wait_for()
        # Room for the widget: no file browser beside the notebook.
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

    def run_all(self) -> None:
        """Run every cell; returns when the last one has finished."""
        self.page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def run_cell(self, code: str) -> str:
        """Append a code cell, run it, return its text output (stdout, text/plain, or the error)."""
        return self.page.evaluate(
            """async (code) => {
                 const app = window.jupyterapp, nb = app.shell.currentWidget.content;
                 const n = nb.model.cells.length;
                 nb.model.sharedModel.insertCell(n, { cell_type: 'code', source: code });
                 nb.activeCellIndex = n;
                 await app.commands.execute('notebook:run-cell');
                 return nb.widgets[n].model.outputs.toJSON().map(o => o.text
                   ?? (o.data && o.data['text/plain']) ?? (o.ename ? `${o.ename}: ${o.evalue}` : '')).join('');
               }""",
            code)

    def python_json(self, expression: str):
        """Evaluate a Python expression in the kernel (in a new cell) and return it, through JSON."""
        out = self.run_cell(f"import json as _json\nprint(_json.dumps({expression}))")
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise AssertionError(f"{expression!r} printed {out!r}") from None

    def point(self, locator, offset: tuple[float, float] | None = None) -> tuple[float, float]:
        """Viewport coordinates of a locator's centre, or of ``offset`` from its top-left corner."""
        box = locator.bounding_box()
        if offset is None:
            return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        return box["x"] + offset[0], box["y"] + offset[1]

    def drag(self, source, target, *, offset: tuple[float, float] | None = None, steps: int = 15) -> None:
        """Press the mouse on ``source``'s centre, move in ``steps`` events to ``target`` (its centre, or
        ``offset`` from its top-left), release. Scrolls first: page.mouse works in viewport
        coordinates and JupyterLab scrolls the notebook whenever a cell runs."""
        source.scroll_into_view_if_needed()
        x0, y0 = self.point(source)
        x1, y1 = self.point(target, offset)
        self.page.mouse.move(x0, y0)
        self.page.mouse.down()
        self.page.mouse.move(x1, y1, steps=steps)
        self.page.mouse.up()

    def shot(self, name: str, locator=None) -> Path:
        path = self.shots / f"{name}.png"
        (locator or self.page).screenshot(path=str(path))
        return path


@pytest.fixture
def lab(browser, jupyter_server, shots_dir, request):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    page = context.new_page()
    helper = Lab(page, jupyter_server, shots_dir)
    yield helper
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        try:
            helper.shot(f"FAILED_{request.node.name}")
        except Exception as exc:  # the page may be gone; the console below still helps
            print(f"no failure screenshot: {exc}")
        print("\n".join(helper.console[-50:]))
    context.close()
    jupyter_server.shutdown_all_sessions()  # this test's kernels: on 2 cores they must not pile up


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
