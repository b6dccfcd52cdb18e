"""``nbserve.EnsembleBuilder``: draw an ensemble by dragging registered models and connecting ports.

The Python object holds the one true state (an :class:`~nbserve.widgets._ensemble_graph.EnsembleGraph`);
the browser renders its traitlets and sends every action back as a command, which is applied here,
checked, recorded for undo and answered (``{"ok": false, "error": ...}`` when it fails, so the browser
never waits in vain). The same actions are methods, so a notebook can drive the canvas from code,
and ``builder.ensemble`` / ``builder.ensemble = ens`` convert between the canvas and an
:class:`~nbserve.ensemble.Ensemble`.

The JavaScript lives in the repository's top-level ``widgets/`` folder and is bundled into
``static/`` (committed), so installing nbserve needs no Node.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NbserveError, require
from ._ensemble_graph import EnsembleGraph
from ._sample import example_inputs, previews

anywidget = require("anywidget", "notebook", purpose="nbserve.EnsembleBuilder")
traitlets = require("traitlets", "notebook", purpose="nbserve.EnsembleBuilder")

__all__ = ["EnsembleBuilder"]

STATIC = Path(__file__).parent / "static"
UNDO_DEPTH = 200


class _RegistryListener:
    """Forwards registry events to a builder without keeping it alive: the registry outlives widgets."""

    def __init__(self, builder: EnsembleBuilder) -> None:
        self._builder = weakref.ref(builder)
        self.unsubscribe: Callable[[], None] | None = None

    def __call__(self, event: Any) -> None:
        builder = self._builder()
        if builder is None:
            if self.unsubscribe is not None:
                self.unsubscribe()
            return
        builder._on_registry_event(event)


class EnsembleBuilder(anywidget.AnyWidget):
    """A drag-and-drop editor for ensembles of registered models, in the notebook.

    Drag models from the palette (every registered model; it follows registrations) onto the canvas,
    connect an output port to an input port, declare the ensemble's inputs and outputs (or drop a
    connection from a port on empty canvas to expose that port), then *register* and *run sample*.
    Every edge is checked as it is drawn; an invalid one is drawn red with the reason on hover.
    Delete removes the selection, Ctrl+Z undoes the last action.

    Args:
        registry: where models are found and the ensemble is registered (default: nbserve's).
        ensemble: an :class:`~nbserve.ensemble.Ensemble` built in code to show, laid out automatically.
        name: the ensemble's name when ``ensemble`` is not given.
        max_batch_size: the ensemble's max_batch_size when ``ensemble`` is not given.
        sample_inputs: the request "run sample" sends (default: made-up values for every input).

    Attributes:
        ensemble: the Ensemble on the canvas (assign one to show it instead).
        edge_errors: ``{edge id: reason}`` for every invalid edge.
        sample_outputs: the outputs of the last sample run; ``sample_trace`` its per-step trace.

    >>> import numpy as np, nbserve
    >>> reg = nbserve.Registry()
    >>> _ = reg.register(lambda x: x * 2, name="double", example=np.ones((1, 2), "float32"))
    >>> builder = EnsembleBuilder(registry=reg, name="twice")
    >>> builder.add_input("x", "FP32", [2])
    'in:x'
    >>> builder.add_step("double")
    'double'
    >>> builder.add_output("y")
    'out:y'
    >>> builder.connect("in:x", "x", "double", "x")
    'e1'
    >>> builder.connect("double", "output_0", "out:y", "y")
    'e2'
    >>> builder.ensemble.steps
    [Step(model='double', version=-1, inputs={'x': 'x'}, outputs={'output_0': 'y'})]
    >>> builder.run_sample({"x": np.ones((1, 2), "float32")})["y"].tolist()
    [[2.0, 2.0]]
    >>> builder.close()
    """

    _esm = STATIC / "ensemble_builder.js"
    _css = STATIC / "ensemble_builder.css"

    # The browser's view of the state. Python code reads them; only the builder writes them.
    palette = traitlets.List(traitlets.Dict()).tag(sync=True)
    nodes = traitlets.List(traitlets.Dict()).tag(sync=True)
    edges = traitlets.List(traitlets.Dict()).tag(sync=True)
    ensemble_inputs = traitlets.List(traitlets.Dict()).tag(sync=True)
    ensemble_outputs = traitlets.List(traitlets.Dict()).tag(sync=True)
    edge_errors = traitlets.Dict().tag(sync=True)
    sample = traitlets.Dict().tag(sync=True)
    code = traitlets.Unicode("").tag(sync=True)
    name = traitlets.Unicode("ensemble").tag(sync=True)
    can_undo = traitlets.Bool(False).tag(sync=True)

    def __init__(
        self,
        registry: Any = None,
        ensemble: Any = None,
        *,
        name: str = "ensemble",
        max_batch_size: int = 64,
        sample_inputs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if registry is None:
            from ..registry import default_registry

            registry = default_registry
        self.registry = registry
        self.sample_inputs = sample_inputs
        self.sample_outputs: dict[str, Any] | None = None
        self.sample_trace: list[dict[str, Any]] | None = None
        self._lock = threading.RLock()
        self._undo: list[dict[str, Any]] = []
        self._publishing = False
        self._server: Any = None
        if ensemble is not None:
            self._graph = EnsembleGraph.from_ensemble(ensemble, registry)
        else:
            self._graph = EnsembleGraph(name, max_batch_size=max_batch_size)
        self._publishing = True  # the first state goes out with the widget itself
        try:
            super().__init__(**self._state(), **kwargs)
        finally:
            self._publishing = False
        listener = _RegistryListener(self)
        listener.unsubscribe = self._unsubscribe = registry.subscribe(listener)
        self.on_msg(self._on_message)

    # ------------------------------------------------------------------ state -> browser
    def _state(self) -> dict[str, Any]:
        """The traitlet values that show the graph."""
        graph = self._graph
        graph.refresh(self.registry)
        errors = graph.check(self.registry)
        names = graph.tensor_names(graph.valid_edges(errors))
        specs = graph.output_specs(errors)
        # Copies: the traitlets must not share lists with the graph, which the next edit changes.
        return {
            "palette": self._palette(),
            "nodes": copy.deepcopy(graph.steps),
            "ensemble_inputs": copy.deepcopy(graph.inputs),
            "ensemble_outputs": [dict(t, **(specs[t["name"]] or {"dtype": None, "dims": None})) for t in graph.outputs],
            "edges": [dict(e, tensor=names.get((e["source"], e["source_port"]), "")) for e in graph.edges],
            "edge_errors": errors,
            "code": graph.code(errors),
            "name": graph.name,
            "can_undo": bool(self._undo),
        }

    def _publish(self) -> None:
        """Push the graph to the browser, as one message."""
        with self._lock:
            state = self._state()
            self._publishing = True
            try:
                with self.hold_sync():
                    for key, value in state.items():
                        setattr(self, key, value)
            finally:
                self._publishing = False

    def _palette(self) -> list[dict[str, Any]]:
        entries = []
        for model in self.registry.models():
            latest = model.latest
            if latest.framework == "ensemble":
                continue  # ensembles of ensembles are possible in code, but not offered here
            entries.append({
                "name": model.name,
                "version": latest.version,
                "versions": sorted(model.versions),
                "framework": latest.framework,
                "max_batch_size": int(latest.config.max_batch_size),
                "inputs": [{"name": s.name, "dtype": s.dtype, "dims": list(s.dims)} for s in latest.inputs],
                "outputs": [{"name": s.name, "dtype": s.dtype, "dims": list(s.dims)} for s in latest.outputs],
            })
        return entries

    @traitlets.validate("palette", "nodes", "edges", "ensemble_inputs", "ensemble_outputs", "edge_errors",
                        "code", "can_undo")
    def _read_only(self, proposal: Any) -> Any:
        if not self._publishing:
            raise traitlets.TraitError(
                f"EnsembleBuilder.{proposal['trait'].name} is read-only: change the canvas with add_step, "
                "connect, add_input, add_output, remove, or assign builder.ensemble")
        return proposal["value"]

    @traitlets.observe("name")
    def _name_changed(self, change: Any) -> None:
        if self._publishing or change["new"] == self._graph.name:
            return
        self.rename(change["new"])

    def _on_registry_event(self, event: Any) -> None:
        # Runs on whichever thread registered or removed the model.
        self._publish()

    # ------------------------------------------------------------------ undo
    def _edit(self, action: Callable[[], Any], *, keeps_sample: bool = False) -> Any:
        """Run one undoable change of the graph; on failure the graph is left as it was."""
        with self._lock:
            before = self._graph.state()
            try:
                result = action()
            except BaseException:
                self._graph.restore(before)
                raise
            if self._graph.state() != before:
                self._undo.append(before)
                del self._undo[:-UNDO_DEPTH]
                if not keeps_sample:
                    self._clear_sample()
            self._publish()
            return result

    def undo(self) -> bool:
        """Undo the last change to the canvas; returns False when there is nothing to undo."""
        with self._lock:
            if not self._undo:
                return False
            self._graph.restore(self._undo.pop())
            self._clear_sample()
            self._publish()
            return True

    def _clear_sample(self) -> None:
        self.sample = {}
        self.sample_outputs = None
        self.sample_trace = None

    # ------------------------------------------------------------------ editing (the canvas's actions)
    def add_step(self, model: str, *, version: int = -1, x: float | None = None, y: float | None = None) -> str:
        """Add a step running a registered model; returns its node id (the model's name, or ``name*2``...).

        Raises:
            ModelNotFound: no such model (or version) is registered.
        """
        return self._edit(lambda: self._graph.add_step(model, self.registry, version=version, x=x, y=y))

    def add_input(self, name: str, dtype: Any, dims: Iterable[Any], *, x: float | None = None,
                  y: float | None = None) -> str:
        """Declare an ensemble input (``dims`` without the batch dimension); returns ``"in:<name>"``.

        Raises:
            ConfigError: the name is empty or taken, or the dtype or dims are not valid.
        """
        return self._edit(lambda: self._graph.add_input(name, dtype, _dims(dims, name), x=x, y=y))

    def add_output(self, name: str, *, x: float | None = None, y: float | None = None) -> str:
        """Declare an ensemble output, typed by the step output connected to it; returns ``"out:<name>"``."""
        return self._edit(lambda: self._graph.add_output(name, x=x, y=y))

    def connect(self, source: str, source_port: str, target: str, target_port: str) -> str:
        """Connect an output port to an input port; returns the edge id.

        The edge is checked at once: when it is invalid it is still drawn (red) and
        ``builder.edge_errors[edge_id]`` says why.

        Args:
            source: a step id or ``"in:<name>"``. source_port: the model output (or the input's name).
            target: a step id or ``"out:<name>"``. target_port: the model input (or the output's name).

        Raises:
            ConfigError: no such node or port, or the same edge twice.
        """
        return self._edit(lambda: self._graph.connect(source, source_port, target, target_port))

    def expose_input(self, node: str, port: str, *, x: float | None = None, y: float | None = None) -> str:
        """Make a step's input port an ensemble input (same name, dtype and dims) and connect it."""
        def action() -> str:
            spec = next((p for p in self._graph.target_ports(node) if p["name"] == port), None)
            if spec is None or node.startswith("out:"):
                raise ConfigError(f"step '{node}' has no input port '{port}'", model=self._graph.name)
            name = self._graph.unique_tensor_name(port)
            input_node = self._graph.add_input(name, spec["dtype"], spec["dims"], x=x, y=y)
            self._graph.connect(input_node, name, node, port)
            return input_node

        return self._edit(action)

    def expose_output(self, node: str, port: str, *, x: float | None = None, y: float | None = None) -> str:
        """Make a step's output port an ensemble output (same name) and connect it."""
        def action() -> str:
            if node.startswith("in:") or port not in {p["name"] for p in self._graph.source_ports(node)}:
                raise ConfigError(f"step '{node}' has no output port '{port}'", model=self._graph.name)
            name = self._graph.unique_tensor_name(port)
            output_node = self._graph.add_output(name, x=x, y=y)
            self._graph.connect(node, port, output_node, name)
            return output_node

        return self._edit(action)

    def remove(self, *ids: str) -> list[str]:
        """Delete nodes (with their edges) and edges by id; returns every id removed."""
        return self._edit(lambda: self._graph.remove(ids))

    def move(self, node: str, x: float, y: float) -> None:
        """Place a node's top-left corner at (x, y) on the canvas."""
        self._edit(lambda: self._graph.move(node, x, y), keeps_sample=True)

    def layout(self) -> None:
        """Arrange the nodes left to right along the edges (and fit them into the view)."""
        self._edit(self._graph.layout, keeps_sample=True)
        self.send({"event": "fit_view"})

    def rename(self, name: str) -> None:
        """Rename the ensemble (the model name it registers under)."""
        from ..config import validate_name

        def action() -> None:
            self._graph.name = validate_name(name, what="ensemble name")

        try:
            self._edit(action, keeps_sample=True)
        except ConfigError:
            self._publish()  # puts the old name back into the traitlet
            raise

    def _set_sizes(self, sizes: Mapping[str, Any]) -> None:
        """The browser reports how big it drew each node; the layout uses it."""
        with self._lock:
            self._graph.sizes = {str(k): (int(v[0]), int(v[1])) for k, v in sizes.items()}

    # ------------------------------------------------------------------ code <-> canvas
    @property
    def ensemble(self) -> Any:
        """The :class:`~nbserve.ensemble.Ensemble` on the canvas (a new object on every read).

        Raises:
            ConfigError: an edge on the canvas is invalid (it names the edge and the reason).
        """
        with self._lock:
            errors = self._graph.check(self.registry)
            if errors:
                edge_id, reason = next(iter(errors.items()))
                edge = self._graph.edge(edge_id)
                more = f" (and {len(errors) - 1} more invalid edges)" if len(errors) > 1 else ""
                raise ConfigError(
                    f"edge {edge_id} from {edge['source']}.{edge['source_port']} to "
                    f"{edge['target']}.{edge['target_port']} is invalid: {reason}{more}",
                    model=self._graph.name,
                    hint=f"delete it on the canvas (click it, press Delete) or builder.remove({edge_id!r})",
                )
            return self._graph.to_ensemble(self.registry)

    @ensemble.setter
    def ensemble(self, ensemble: Any) -> None:
        self.load(ensemble)

    def load(self, ensemble: Any) -> None:
        """Show an Ensemble built in code (replacing the canvas; undo brings the old one back).

        Raises:
            ConfigError: a step reads a tensor nothing writes, so the canvas cannot draw it.
        """
        def action() -> None:
            self._graph.restore(EnsembleGraph.from_ensemble(ensemble, self.registry).state())

        self._edit(action)
        self.send({"event": "fit_view"})

    # ------------------------------------------------------------------ register and run
    def register(self) -> Any:
        """Register the ensemble on the canvas in the builder's registry; returns the RegisteredModel.

        Raises:
            ConfigError: an invalid edge, or what :meth:`nbserve.ensemble.Ensemble.check` finds.
        """
        ensemble = self.ensemble
        return self.registry.register(ensemble, name=ensemble.name)

    def _registered_config(self, ensemble: Any) -> Any:
        config = ensemble.to_config(self.registry)
        if ensemble.name in self.registry:
            current = self.registry.get(ensemble.name)
            if current.framework == "ensemble" and current.config == config:
                return config
        self.register()
        return config

    def run_sample(self, inputs: Mapping[str, Any] | None = None, *, server: Any = None,
                   timeout_s: float = 60.0) -> Any:
        """Run one request through the ensemble and show every step's outputs and times on the canvas.

        Registers the ensemble first when the registry does not hold exactly this config.

        Args:
            inputs: the request (default: ``sample_inputs``, else made-up values for every input).
            server: a running nbserve server to send it to (default: the one ``nbserve.serve()``
                started, when it serves this registry; else a private in-kernel server without ports).
            timeout_s: how long to wait for the answer.

        Returns:
            The outputs (a dict of arrays) with a ``trace`` attribute: one record per step.

        Raises:
            ConfigError: the ensemble is not complete or not valid.
            NbserveError: the request failed (the message names the failing step).
        """
        with self._lock:
            ensemble = self.ensemble
            node_ids = [s["id"] for s in self._graph.steps]
        try:
            config = self._registered_config(ensemble)
            if inputs is None:
                inputs = self.sample_inputs
            if inputs is None:
                from ..config import input_specs

                inputs = example_inputs(input_specs(config), batched=config.max_batch_size > 0)
            started = time.perf_counter()
            result = self._sample_server(server).infer(config.name, inputs, trace=True, timeout_s=timeout_s)
            total_us = (time.perf_counter() - started) * 1e6
        except NbserveError as exc:
            self._clear_sample()
            self.sample = {"ok": False, "error": str(exc)}
            raise
        steps = {}
        for record in result.trace:
            index = record.get("step", 0)
            if index < len(node_ids):
                steps[node_ids[index]] = {
                    "queue_us": record["queue_us"],
                    "compute_us": record["compute_us"],
                    "inputs": previews(record.get("inputs") or {}),
                    "outputs": previews(record.get("outputs") or {}),
                }
        self.sample_outputs = dict(result)
        self.sample_trace = result.trace
        self.sample = {"ok": True, "error": None, "total_us": total_us, "inputs": previews(inputs),
                       "outputs": previews(result), "steps": steps}
        return result

    def _sample_server(self, server: Any) -> Any:
        if server is not None:
            return server
        from ..serving.server import Server, current_server

        current = current_server()
        if isinstance(current, Server) and current.is_running and current.registry is self.registry:
            return current
        if self._server is None or not self._server.is_running:
            # No ports: the sample runs through the same core, batchers and ensemble scheduler.
            self._server = Server(self.registry, http=False, grpc=False, metrics=False).start()
        return self._server

    # ------------------------------------------------------------------ commands from the browser
    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or "cmd" not in content:
            return
        request = content.get("id")
        try:
            handler = _COMMANDS.get(content["cmd"])
            if handler is None:
                raise ConfigError(f"unknown builder command {content['cmd']!r}",
                                  expected=f"one of {sorted(_COMMANDS)}",
                                  hint="reload the page: the widget's JavaScript and Python are out of step")
            args = content.get("args") or {}
            reply = {"reply_to": request, "ok": True, **(handler(self, **args) or {})}
        except Exception as exc:  # every command is answered, whatever went wrong
            error = str(exc) if isinstance(exc, NbserveError) else f"{type(exc).__name__}: {exc}"
            reply = {"reply_to": request, "ok": False, "error": error}
        self.send(reply)

    def _cmd_connect(self, source: str, source_port: str, target: str, target_port: str) -> dict[str, Any]:
        edge_id = self.connect(source, source_port, target, target_port)
        problem = self.edge_errors.get(edge_id)
        if problem:
            return {"edge": edge_id, "warning": True, "message": f"invalid edge (drawn red): {problem}"}
        return {"edge": edge_id, "message": f"connected {source}.{source_port} -> {target}.{target_port}"}

    def _cmd_register(self) -> dict[str, Any]:
        model = self.register()
        return {"message": f"registered '{model.name}' v{model.version}", "version": model.version}

    def _cmd_run_sample(self) -> dict[str, Any]:
        result = self.run_sample()
        outputs = ", ".join(f"{k} = {v['text']}" for k, v in self.sample["outputs"].items())
        return {"message": f"sample ran in {self.sample['total_us'] / 1000:.1f} ms: {outputs}",
                "outputs": sorted(result)}

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop following the registry, stop the private sample server, close the widget."""
        unsubscribe, self._unsubscribe = getattr(self, "_unsubscribe", None), None
        if unsubscribe is not None:
            unsubscribe()
        server, self._server = getattr(self, "_server", None), None
        if server is not None:
            server.stop()
        super().close()

    def __repr__(self) -> str:
        graph = self._graph
        return (f"<EnsembleBuilder {graph.name!r} inputs={[t['name'] for t in graph.inputs]} "
                f"steps={[s['id'] for s in graph.steps]} outputs={[t['name'] for t in graph.outputs]} "
                f"edges={len(graph.edges)} invalid={len(self.edge_errors)}>")


def _dims(dims: Iterable[Any], tensor: str) -> list[int]:
    if isinstance(dims, (str, bytes)):
        dims = [d for d in str(dims).replace("[", "").replace("]", "").split(",") if d.strip()]
    try:
        return [int(d) for d in dims]
    except (TypeError, ValueError):
        raise ConfigError("dims must be whole numbers (-1 for a size that varies)", tensor=tensor,
                          got=repr(dims), hint="e.g. [1], [-1, 16] or '-1, 16'") from None


def _moves(builder: EnsembleBuilder, moves: list[dict[str, Any]]) -> None:
    def action() -> None:
        for m in moves:
            builder._graph.move(m["id"], m["x"], m["y"])

    builder._edit(action, keeps_sample=True)


# Browser command -> handler(builder, **args) returning extra reply fields (or None).
_COMMANDS: dict[str, Callable[..., dict[str, Any] | None]] = {
    "add_step": lambda b, model, x=None, y=None, version=-1: {"node": b.add_step(model, version=version, x=x, y=y)},
    "add_input": lambda b, name, dtype, dims, x=None, y=None: {"node": b.add_input(name, dtype, dims, x=x, y=y)},
    "add_output": lambda b, name, x=None, y=None: {"node": b.add_output(name, x=x, y=y)},
    "expose_input": lambda b, node, port, x=None, y=None: {"node": b.expose_input(node, port, x=x, y=y)},
    "expose_output": lambda b, node, port, x=None, y=None: {"node": b.expose_output(node, port, x=x, y=y)},
    "connect": EnsembleBuilder._cmd_connect,
    "delete": lambda b, nodes=(), edges=(): {"removed": b.remove(*nodes, *edges)},
    "move": lambda b, moves: _moves(b, moves),
    "layout": lambda b: b.layout(),
    "sizes": lambda b, sizes: b._set_sizes(sizes),
    "undo": lambda b: {"message": "undid the last change" if b.undo() else "nothing to undo"},
    "set_name": lambda b, name: b.rename(name),
    "register": EnsembleBuilder._cmd_register,
    "run_sample": EnsembleBuilder._cmd_run_sample,
}
