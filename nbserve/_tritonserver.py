"""A real Triton Inference Server and perf_analyzer, from PyPI wheels, for tests and benchmarks.

Docker does not run everywhere, but two wheels carry the real binaries:

* ``nvidia-pytriton`` ships ``tritonserver`` (Triton 2.51, Python backend only) under
  ``pytriton/tritonserver/`` with one Python-backend stub per Python version, and its shared
  libraries in ``nvidia_pytriton.libs/``. :class:`TritonServer` prepares a runnable copy the way
  PyTriton does at start-up (bin/, backends/, caches/ plus the stub for this Python) once per user
  and pytriton version, and runs it on a model repository.
* ``tritonclient==2.41.0`` (the last wheel that carries it) ships ``perf_analyzer``;
  :func:`perf_analyzer_path` downloads that wheel with pip and unpacks just the binary.

Upstream quirk worked around here: the stub of this Triton build uses a pybind11 older than 2.12,
which reads NumPy 2's dtype descriptors with NumPy 1's layout, so with NumPy 2 every tensor crossing
the stub has item size 0 (inputs read as their first element repeated, outputs fail with "output
tensor shape does not match size"). When this environment has NumPy 2, the stub runs in a small
cached virtual environment that holds NumPy < 2 and sees this environment's packages after it.

Nothing heavy is imported at import time; this module is private (tests, benchmarks).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MissingDependency, ServerStateError

__all__ = [
    "TritonServer",
    "available",
    "unavailable_reason",
    "perf_analyzer_path",
    "perf_analyzer_unavailable_reason",
    "perf_analyzer_env",
    "cache_root",
    "PERF_ANALYZER_TRITONCLIENT",
]

PERF_ANALYZER_TRITONCLIENT = "2.41.0"
MIN_GLIBC = (2, 35)  # nvidia-pytriton 0.7 is a manylinux_2_35 wheel
_PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"
_INSTALL_HINT = 'pip install "nbserve[test]" (it brings nvidia-pytriton)'

_lock = threading.Lock()
_prepared: dict[str, Any] = {}  # memoised results of the one-time preparation steps


# ----------------------------------------------------------------------------- locations
def cache_root() -> Path:
    """A per-user directory in the temp dir for the prepared server copy and perf_analyzer."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(tempfile.gettempdir()) / f"nbserve-triton-{uid}"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def _pytriton_dir() -> Path | None:
    # find_spec on a top-level package locates it without running its __init__ (which is heavy).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _pytriton_version() -> str:
    try:
        return importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _libpython_dir() -> str | None:
    """The interpreter's LIBDIR when it holds the libpython the stub links by soname."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or f"libpython{_PYVER}.so.1.0"
    if libdir and (Path(libdir) / soname).exists():
        return libdir
    return None


def _glibc() -> tuple[int, int] | None:
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (ValueError, OSError, AttributeError):
        return None
    if not name.startswith("glibc "):
        return None
    major, minor = name.split()[1].split(".")[:2]
    return int(major), int(minor)


def _numpy_major() -> int | None:
    try:
        return int(importlib.metadata.version("numpy").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout_s)


def _replace_dir(staging: Path, target: Path) -> None:
    """Move a fully built ``staging`` to ``target``; whoever renames first wins a race."""
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():
            raise


# ----------------------------------------------------------------------------- preparation
def _prepare_server_copy() -> Path:
    """bin/, backends/, caches/ and this Python's stub, copied once per pytriton version."""
    src = _pytriton_dir() / "tritonserver"  # type: ignore[operator]
    target = cache_root() / f"tritonserver-pytriton{_pytriton_version()}-py{_PYVER}"
    if (target / "bin" / "tritonserver").exists():
        return target
    stub = src / "python_backend_stubs" / _PYVER / "triton_python_backend_stub"
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".partial", dir=target.parent))
    try:
        for part in ("bin", "backends", "caches"):
            shutil.copytree(src / part, staging / part, symlinks=True)
        shutil.copy2(stub, staging / "backends" / "python" / "triton_python_backend_stub")
        for exe in (staging / "bin" / "tritonserver", staging / "backends" / "python" / "triton_python_backend_stub"):
            exe.chmod(0o755)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace_dir(staging, target)
    return target


def _site_dirs() -> list[str]:
    dirs = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in dirs:
            dirs.append(path)
    return dirs


def _prepare_stub_env() -> Path:
    """The Python environment whose ``bin/python3`` the stub follows to its site-packages.

    This environment itself when its NumPy is < 2; otherwise a cached venv holding NumPy < 2 whose
    ``.pth`` file appends this environment's site-packages (so models still import everything
    installed here, cloudpickle included). See the module docstring for why.
    """
    if (_numpy_major() or 0) < 2:
        return Path(sys.prefix)
    key = hashlib.sha256("\0".join([sys.prefix, *_site_dirs()]).encode()).hexdigest()[:12]
    target = cache_root() / f"stub-env-py{_PYVER}-numpy1-{key}"
    if (target / ".complete").exists():
        return target
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", suffix=".partial", dir=target.parent))
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(staging)], check=True, capture_output=True,
                       timeout=120)
        site = Path(subprocess.run(
            [str(staging / "bin" / "python3"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60).stdout.strip())
        done = _pip("install", "--quiet", "--no-deps", "--only-binary=:all:", "--target", str(site), "numpy<2")
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "pip failed")
        (site / "zz_nbserve_parent_env.pth").write_text("\n".join(_site_dirs()) + "\n")
        (staging / ".complete").write_text("")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Renaming a venv is safe for how the stub uses it: bin/python3 is a symlink to the base
    # interpreter and the venv is found from pyvenv.cfg next to it (only activate scripts name the path).
    _replace_dir(staging, target)
    return target


def _prepare() -> tuple[Path, Path]:
    """(server copy, stub environment); raises MissingDependency with the reason when impossible."""
    with _lock:
        if "error" in _prepared:
            raise MissingDependency(_prepared["error"], hint=_INSTALL_HINT)
        if "copy" in _prepared:
            return _prepared["copy"], _prepared["env"]
        reason = _static_problem()
        if reason is None:
            try:
                copy = _prepare_server_copy()
                reason = _binary_problem(copy)
                env = _prepare_stub_env() if reason is None else None
            except Exception as exc:  # a failed copy or pip run: report it rather than crash a test run
                reason = f"preparing tritonserver failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            _prepared["error"] = reason
            raise MissingDependency(reason, hint=_INSTALL_HINT)
        _prepared["copy"], _prepared["env"] = copy, env
        return copy, env


def _static_problem() -> str | None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the tritonserver in nvidia-pytriton runs on x86-64 Linux only, this is {sys.platform}/{platform.machine()}"
    glibc = _glibc()
    if glibc is None or glibc < MIN_GLIBC:
        have = "not glibc" if glibc is None else f"glibc {glibc[0]}.{glibc[1]}"
        return f"tritonserver needs glibc >= {MIN_GLIBC[0]}.{MIN_GLIBC[1]}, this system has {have}"
    root = _pytriton_dir()
    if root is None:
        return "nvidia-pytriton is not installed"
    if not (root / "tritonserver" / "bin" / "tritonserver").exists():
        return f"nvidia-pytriton {_pytriton_version()} has no tritonserver binary at {root / 'tritonserver/bin'}"
    stub = root / "tritonserver" / "python_backend_stubs" / _PYVER / "triton_python_backend_stub"
    if not stub.exists():
        return f"nvidia-pytriton {_pytriton_version()} has no Python-backend stub for Python {_PYVER}"
    return None


def _binary_problem(copy: Path) -> str | None:
    """Run ``tritonserver --help`` once: catches missing shared libraries and the like."""
    try:
        done = subprocess.run([str(copy / "bin" / "tritonserver"), "--help"], capture_output=True, text=True,
                              env=_server_env(Path(sys.prefix)), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"tritonserver cannot run here: {exc}"
    output = (done.stdout + done.stderr).strip()
    if "--model-repository" not in output:
        return f"tritonserver cannot run here: {output.splitlines()[-1] if output else f'exit code {done.returncode}'}"
    return None


def _server_env(stub_env: Path) -> dict[str, str]:
    env = dict(os.environ)
    libs = [str(_pytriton_dir().parent / "nvidia_pytriton.libs")]  # type: ignore[union-attr]
    libpython = _libpython_dir()
    if libpython:
        # First: the stub links libpython by soname and must get this interpreter's exact build.
        libs.insert(0, libpython)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    # The stub finds its site-packages through the python3 first on PATH.
    bins = [str(stub_env / "bin")]
    if stub_env != Path(sys.prefix):
        bins.append(str(Path(sys.prefix) / "bin"))
    env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
    return env


def available() -> bool:
    """Whether the real tritonserver can run here.

    The first call in a process prepares the cached server copy (about a second) and, when this
    environment has NumPy 2, the stub's NumPy < 2 environment (one ``pip install``, once per user).
    """
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """None when tritonserver can run, else why not (e.g. glibc too old, package missing)."""
    try:
        _prepare()
    except MissingDependency:
        return _prepared["error"]
    return None


# ----------------------------------------------------------------------------- processes
def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: parse after the last ")".
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def _is_stub_of(pid: int, repository: Path) -> bool:
    """Whether ``pid`` is still a Python-backend stub serving a model of ``repository`` (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return (len(argv) > 1 and argv[0].endswith(b"triton_python_backend_stub")
            and argv[1].startswith(os.fsencode(repository) + b"/"))


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when the thread that started it dies.

    So a crashed test run or benchmark does not leave a tritonserver behind. (The signal follows the
    starting *thread*: start servers from a thread that outlives them, e.g. the main thread.)
    """
    with contextlib.suppress(Exception):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """The real ``tritonserver`` on a model repository, on 127.0.0.1.

    Args:
        repository: the model repository (Triton layout).
        http_port, grpc_port, metrics_port: 0 picks a free port.
        model_control: ``"none"`` (load everything) or ``"explicit"`` (load only ``load``).
        load: model names to load at start-up in explicit mode.
        extra_args: more tritonserver flags, e.g. ``["--log-verbose=1"]``.

    >>> with TritonServer("model_repository") as server:      # doctest: +SKIP
    ...     tritonclient.http.InferenceServerClient(server.http_address).is_server_ready()
    True
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        model_control: str = "none",
        load: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        log_lines: int = 400,
    ) -> None:
        if model_control not in ("none", "explicit"):
            raise ValueError(f"model_control must be 'none' or 'explicit', got {model_control!r}")
        if load and model_control != "explicit":
            raise ValueError("load=[...] needs model_control='explicit'")
        self.repository = Path(repository).absolute()
        self.host = "127.0.0.1"
        self._requested = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.model_control = model_control
        self.load = list(load)
        self.extra_args = list(extra_args)
        self._log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stubs: set[int] = set()
        self.ready_s: float | None = None

    # --------------------------------------------------------------------- addresses
    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log(self) -> str:
        """The last lines the server printed (stdout and stderr together)."""
        return "".join(self._log)

    @property
    def returncode(self) -> int | None:
        """Its exit status once it has exited (negative: the signal that ended it), else None."""
        return self._process.poll() if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --------------------------------------------------------------------- lifecycle
    def command(self, copy: Path) -> list[str]:
        args = [
            str(copy / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={copy / 'backends'}",
            f"--cache-directory={copy / 'caches'}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=1048576",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
            "--strict-readiness=true", "--exit-timeout-secs=10",
        ]
        if self.model_control == "explicit":
            args.append("--model-control-mode=explicit")
            args.extend(f"--load-model={name}" for name in self.load)
        return args + self.extra_args

    def start(self, timeout_s: float = 60.0) -> TritonServer:
        """Start the server and wait until ``GET /v2/health/ready`` answers 200.

        Raises:
            MissingDependency: tritonserver cannot run here (the message says why).
            ServerStateError: it exited or was not ready in time; the message ends with its log.
        """
        if self._process is not None:
            raise ServerStateError("this TritonServer was already started", hint="create a new TritonServer")
        copy, stub_env = _prepare()
        started = time.perf_counter()
        # A port picked free here can be taken before tritonserver binds it: retry on fresh ports.
        for attempt in range(3):
            ports = [p or _free_port(self.host) for p in self._requested]
            self.http_port, self.grpc_port, self.metrics_port = ports
            self._log.clear()
            self._process = subprocess.Popen(
                self.command(copy), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=_server_env(stub_env), cwd=str(copy), preexec_fn=_die_with_parent,
            )
            self._reader = threading.Thread(target=self._read_log, args=(self._process,), daemon=True,
                                            name="tritonserver-log")
            self._reader.start()
            if self._wait_ready(started + timeout_s):
                self.ready_s = time.perf_counter() - started
                self._stubs.update(_children(self._process.pid))
                return self
            exited = self._process.poll() is not None
            busy = "already in use" in self.log or "Address in use" in self.log
            self.stop()
            if exited and busy and not any(self._requested) and attempt < 2:
                self._process = None
                continue
            what = "tritonserver exited during start-up" if exited else f"tritonserver was not ready within {timeout_s} s"
            raise ServerStateError(what, got=f"exit code {self._process.returncode}; its log:\n{self._excerpt()}",
                                   hint="check the model repository (config.pbtxt, model.py) named in the log")
        raise AssertionError("unreachable")

    def _read_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            self._log.append(line.decode("utf-8", "replace"))
        process.stdout.close()

    def _excerpt(self, errors: int = 20, tail: int = 8) -> str:
        """Its error lines and last lines, without the status tables that fill most of its log."""
        lines = [line for line in self._log if line.strip() and not line.startswith(("+", "|"))]
        flagged = [line for line in lines[:-tail] if line.startswith("E") or "ERROR" in line or "error" in line]
        return "".join(flagged[-errors:] + lines[-tail:])

    def _wait_ready(self, deadline: float) -> bool:
        while time.perf_counter() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            if self._health("ready") == 200:
                return True
            time.sleep(0.05)  # polling a child process's HTTP port: there is no event to wait on
        return False

    def _health(self, which: str) -> int | None:
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=2)
        try:
            conn.request("GET", f"/v2/health/{which}")
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the server (it unloads models and ends its stubs), SIGKILL after ``timeout_s``.

        Idempotent. Only ever signals the process this object started and its own children.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._stubs.update(_children(process.pid))
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        # A server that exits cleanly ends its stubs; one that was killed or crashed leaves them
        # running (re-parented to init), so end the ones it started, checking each pid still is one.
        for pid in sorted(self._stubs):
            if _is_stub_of(pid, self.repository):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self._stubs.clear()
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> TritonServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<TritonServer {state} http={self.http_address} grpc={self.grpc_address} repo={self.repository}>"


# ----------------------------------------------------------------------------- perf_analyzer
_NOT_FETCHED = "perf_analyzer has not been fetched yet (perf_analyzer_path(fetch=True) downloads it)"
_PA_MEMBER = f"tritonclient-{PERF_ANALYZER_TRITONCLIENT}.data/data/bin/perf_analyzer"


def _cuda_runtime_lib() -> Path | None:
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        lib = Path(base) / "cuda_runtime" / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def perf_analyzer_env() -> dict[str, str]:
    """The environment perf_analyzer runs in (libcudart from nvidia-cuda-runtime-cu12)."""
    env = dict(os.environ)
    lib = _cuda_runtime_lib()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def perf_analyzer_unavailable_reason(fetch: bool = True) -> str | None:
    """None when :func:`perf_analyzer_path` finds a runnable perf_analyzer, else why not."""
    if perf_analyzer_path(fetch) is not None:
        return None
    return _prepared.get("pa_error") or _prepared.get("pa_not_fetched")


def perf_analyzer_path(fetch: bool = True) -> Path | None:
    """A runnable perf_analyzer, or None (see :func:`perf_analyzer_unavailable_reason`).

    Downloads the tritonclient 2.41.0 wheel with pip (once, into :func:`cache_root`) and unpacks only
    the binary. It needs Debian's ``libb64-0d`` and pip's ``nvidia-cuda-runtime-cu12`` (the
    ``bench`` extra); no GPU.
    """
    with _lock:
        if "pa" in _prepared or "pa_error" in _prepared:
            return _prepared.get("pa")
        path, reason = _find_perf_analyzer(fetch)
        if path is None and reason == _NOT_FETCHED:
            _prepared["pa_not_fetched"] = reason  # not final: a later call may fetch it
        elif path is None:
            _prepared["pa_error"] = reason
        else:
            _prepared["pa"] = path
        return path


def _find_perf_analyzer(fetch: bool) -> tuple[Path | None, str | None]:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return None, "the perf_analyzer in the tritonclient wheel runs on x86-64 Linux only"
    target_dir = cache_root() / f"perf_analyzer-{PERF_ANALYZER_TRITONCLIENT}"
    binary = target_dir / "perf_analyzer"
    if not binary.exists():
        if not fetch:
            return None, _NOT_FETCHED
        download = Path(tempfile.mkdtemp(prefix="download.", dir=cache_root()))
        try:
            done = _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(download),
                        f"tritonclient=={PERF_ANALYZER_TRITONCLIENT}")
            wheels = sorted(download.glob(f"tritonclient-{PERF_ANALYZER_TRITONCLIENT}-*manylinux*x86_64.whl"))
            if not wheels:
                last = [line for line in done.stderr.splitlines() if "is ignored" not in line]
                return None, (f"pip could not download tritonclient=={PERF_ANALYZER_TRITONCLIENT} "
                              f"(the wheel that carries perf_analyzer): {last[-1] if last else 'no wheel'}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                if _PA_MEMBER not in wheel.namelist():
                    return None, f"{wheels[0].name} has no {_PA_MEMBER}"
                staging = download / "perf_analyzer"
                with wheel.open(_PA_MEMBER) as src, open(staging, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            staging.chmod(0o755)
            target_dir.mkdir(exist_ok=True)
            os.replace(staging, binary)
        finally:
            shutil.rmtree(download, ignore_errors=True)
    if _cuda_runtime_lib() is None:
        return None, ('perf_analyzer links libcudart.so.12 (no GPU needed): pip install nvidia-cuda-runtime-cu12 '
                      '(or pip install "nbserve[bench]")')
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              env=perf_analyzer_env(), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"perf_analyzer cannot run here: {exc}"
    output = done.stdout + done.stderr
    if "error while loading shared libraries" in output:
        missing = output.split("error while loading shared libraries:")[-1].strip().split(":")[0]
        hint = " (Debian/Ubuntu: apt-get install libb64-0d)" if "b64" in missing else ""
        return None, f"perf_analyzer cannot run here: {missing} is missing{hint}"
    return binary, None
