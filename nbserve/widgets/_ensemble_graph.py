"""The EnsembleBuilder's canvas as plain data: steps, ensemble inputs and outputs, and edges.

Kept apart from the widget so that it can be edited, checked, laid out and converted without a
browser or anywidget. Node ids: a step is called after its model (``bert``; a second step running
the same model is ``bert*2``), an ensemble input ``in:<name>``, an ensemble output ``out:<name>``;
``:`` and ``*`` cannot appear in model names, so ids never collide. Every port is named after the
tensor in the model (step ports) or in the ensemble (input and output nodes).

Edges are kept in the order they were drawn, and checked in that order: an edge is valid when it
is sound given the valid edges drawn before it (``check``). Invalid edges stay on the canvas (drawn
red) but never reach the Ensemble.

Ensemble tensor names are derived, not stored: an ensemble input's tensor is its name, a step output
that feeds an ensemble output takes the output's name, and any other step output is named after its
port (``input_ids``), or ``<step>_<port>`` when that name is taken, unless the ensemble was loaded
from code, whose names are kept (``tensor_hints``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..config import validate_name
from ..errors import ConfigError, ModelNotFound
from ..tensors import TensorSpec
from ._layout import layered_layout

__all__ = ["EnsembleGraph", "input_id", "output_id"]

STEP_WIDTH = 240  # the stylesheet's widths (widgets/src/ensemble_builder.css)
IO_SIZE = (170, 38)
NEW_NODE_COLUMNS = 4  # nodes added without a position fill a grid this wide


def input_id(name: str) -> str:
    return f"in:{name}"


def output_id(name: str) -> str:
    return f"out:{name}"


def _port(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.dtype, "dims": list(spec.dims)}


def _describe(node_id: str) -> str:
    if node_id.startswith("in:"):
        return f"ensemble input '{node_id[3:]}'"
    if node_id.startswith("out:"):
        return f"ensemble output '{node_id[4:]}'"
    return f"step '{node_id}'"


def _end(node_id: str, port: str) -> str:
    """How an edge end reads in messages: ``step 'bert' input 'input_ids'`` or ``ensemble input 'text'``."""
    if node_id.startswith(("in:", "out:")):
        return _describe(node_id)
    return f"{_describe(node_id)} port '{port}'"


class EnsembleGraph:
    """Steps, ensemble inputs/outputs and edges of one ensemble being drawn.

    Args:
        name: the ensemble's model name.
        max_batch_size: the ensemble's max_batch_size (the Ensemble's default, 64, unless told).
    """

    def __init__(self, name: str = "ensemble", *, max_batch_size: int = 64) -> None:
        self.name = validate_name(name, what="ensemble name")
        self.max_batch_size = max_batch_size
        # {id, model, version, x, y, inputs, outputs, missing, framework, max_batch_size}
        self.steps: list[dict[str, Any]] = []
        self.inputs: list[dict[str, Any]] = []  # {name, dtype, dims, x, y}
        self.outputs: list[dict[str, Any]] = []  # {name, x, y}
        self.edges: list[dict[str, Any]] = []  # {id, source, source_port, target, target_port}
        self.tensor_hints: dict[tuple[str, str], str] = {}  # (step id, output port) -> tensor name from code
        self.next_edge = 1
        # Node sizes as the browser drew them, for the layout; not part of the undoable state.
        self.sizes: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------ undo support
    def state(self) -> dict[str, Any]:
        """A deep copy of everything, for undo."""
        return copy.deepcopy({k: getattr(self, k) for k in ("name", "max_batch_size", "steps", "inputs", "outputs",
                                                             "edges", "tensor_hints", "next_edge")})

    def restore(self, state: Mapping[str, Any]) -> None:
        for key, value in copy.deepcopy(dict(state)).items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ lookup
    def node_ids(self) -> list[str]:
        return [input_id(t["name"]) for t in self.inputs] + [s["id"] for s in self.steps] + [
            output_id(t["name"]) for t in self.outputs]

    def find(self, node_id: str) -> dict[str, Any]:
        """The step, input or output dict for ``node_id``; ConfigError naming the known ids if none."""
        for node in self._kind_list(node_id):
            if self._id(node_id, node) == node_id:
                return node
        raise ConfigError(
            f"the canvas has no node '{node_id}'",
            model=self.name,
            expected=f"one of {self.node_ids()}",
            hint="steps are called after their model, ensemble inputs 'in:<name>', outputs 'out:<name>'",
        )

    def _kind_list(self, node_id: str) -> list[dict[str, Any]]:
        if node_id.startswith("in:"):
            return self.inputs
        if node_id.startswith("out:"):
            return self.outputs
        return self.steps

    @staticmethod
    def _id(node_id: str, node: Mapping[str, Any]) -> str:
        if node_id.startswith("in:"):
            return input_id(node["name"])
        if node_id.startswith("out:"):
            return output_id(node["name"])
        return node["id"]

    def source_ports(self, node_id: str) -> list[dict[str, Any]]:
        """Ports an edge may leave from: a step's outputs, or an ensemble input's one port."""
        node = self.find(node_id)
        if node_id.startswith("in:"):
            return [{"name": node["name"], "dtype": node["dtype"], "dims": node["dims"]}]
        if node_id.startswith("out:"):
            return []
        return node["outputs"]

    def target_ports(self, node_id: str) -> list[dict[str, Any]]:
        """Ports an edge may arrive at: a step's inputs, or an ensemble output's one port."""
        node = self.find(node_id)
        if node_id.startswith("out:"):
            return [{"name": node["name"], "dtype": None, "dims": None}]
        if node_id.startswith("in:"):
            return []
        return node["inputs"]

    def edge(self, edge_id: str) -> dict[str, Any]:
        for e in self.edges:
            if e["id"] == edge_id:
                return e
        raise ConfigError(f"the canvas has no edge '{edge_id}'", model=self.name,
                          expected=f"one of {[e['id'] for e in self.edges]}")

    # ------------------------------------------------------------------ edits
    def _free_spot(self) -> tuple[int, int]:
        k = len(self.steps) + len(self.inputs) + len(self.outputs)
        return 40 + (k % NEW_NODE_COLUMNS) * (STEP_WIDTH + 50), 40 + (k // NEW_NODE_COLUMNS) * 240

    def add_step(self, model: str, registry: Any, *, version: int = -1, x: float | None = None,
                 y: float | None = None) -> str:
        """Add a step running ``model`` (a registered model); returns its node id.

        Raises:
            ModelNotFound: no such model or version in the registry.
        """
        entry = registry.get(model).get_version(None if version in (None, -1) else version)
        if entry.framework == "ensemble" and model == self.name:
            raise ConfigError("an ensemble cannot run itself as a step", model=self.name,
                              hint="drag other models onto the canvas")
        taken = {s["id"] for s in self.steps}
        node_id, k = model, 1
        while node_id in taken:
            k += 1
            node_id = f"{model}*{k}"
        if x is None or y is None:
            x, y = self._free_spot()
        self.steps.append({"id": node_id, "model": model, "version": -1 if version is None else int(version),
                           "x": int(x), "y": int(y)})
        self.refresh(registry)
        return node_id

    def add_input(self, name: str, dtype: Any, dims: Sequence[Any], *, x: float | None = None,
                  y: float | None = None) -> str:
        """Declare an ensemble input; returns its node id (``in:<name>``)."""
        spec = TensorSpec(self._new_tensor_name(name, "input"), [int(d) for d in dims], dtype)
        if x is None or y is None:
            x, y = self._free_spot()
        self.inputs.append({"name": spec.name, "dtype": spec.dtype, "dims": list(spec.dims), "x": int(x), "y": int(y)})
        return input_id(spec.name)

    def add_output(self, name: str, *, x: float | None = None, y: float | None = None) -> str:
        """Declare an ensemble output (its dtype and dims come from the step that feeds it)."""
        name = self._new_tensor_name(name, "output")
        if x is None or y is None:
            x, y = self._free_spot()
        self.outputs.append({"name": name, "x": int(x), "y": int(y)})
        return output_id(name)

    def _new_tensor_name(self, name: Any, kind: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"an ensemble {kind} needs a name", model=self.name, got=repr(name),
                              hint=f"type a name for the {kind}, e.g. 'text' or 'score'")
        name = name.strip()
        if name in {t["name"] for t in self.inputs} | {t["name"] for t in self.outputs}:
            raise ConfigError(f"the ensemble already has a tensor called '{name}'", model=self.name,
                              tensor=name, hint=f"pick another name for the {kind}")
        return name

    def unique_tensor_name(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``... if an ensemble input or output already has it."""
        taken = {t["name"] for t in self.inputs} | {t["name"] for t in self.outputs}
        candidate, k = name, 1
        while candidate in taken:
            k += 1
            candidate = f"{name}_{k}"
        return candidate

    def connect(self, source: str, source_port: str, target: str, target_port: str) -> str:
        """Draw an edge from an output port to an input port; returns the edge id.

        The edge is kept even when it is invalid (``check`` says why); only an edge between ports
        that do not exist, or the same edge twice, is refused.

        Raises:
            ConfigError: unknown node or port, wrong direction, or a duplicate edge.
        """
        sources = {p["name"] for p in self.source_ports(source)}
        if source_port not in sources:
            raise ConfigError(
                f"{_describe(source)} has no output port '{source_port}'",
                model=self.name,
                expected=f"one of {sorted(sources)}" if sources else "an edge that starts at an output port",
                hint="edges run from an output port (right side) to an input port (left side)",
            )
        targets = {p["name"] for p in self.target_ports(target)}
        if target_port not in targets:
            raise ConfigError(
                f"{_describe(target)} has no input port '{target_port}'",
                model=self.name,
                expected=f"one of {sorted(targets)}" if targets else "an edge that ends at an input port",
                hint="edges run from an output port (right side) to an input port (left side)",
            )
        wanted = (source, source_port, target, target_port)
        for e in self.edges:
            if (e["source"], e["source_port"], e["target"], e["target_port"]) == wanted:
                raise ConfigError(f"{_end(source, source_port)} is already connected to {_end(target, target_port)}",
                                  model=self.name)
        edge_id = f"e{self.next_edge}"
        self.next_edge += 1
        self.edges.append({"id": edge_id, "source": source, "source_port": source_port, "target": target,
                           "target_port": target_port})
        return edge_id

    def remove(self, ids: Iterable[str]) -> list[str]:
        """Delete nodes (with their edges) and edges; returns every id removed.

        Raises:
            ConfigError: an id that is neither a node nor an edge (nothing is removed then).
        """
        ids = list(dict.fromkeys(ids))
        edge_ids = {e["id"] for e in self.edges}
        nodes = [i for i in ids if i not in edge_ids]
        for node_id in nodes:
            self.find(node_id)  # raises before anything changes
        gone_nodes = set(nodes)
        gone_edges = {i for i in ids if i in edge_ids} | {
            e["id"] for e in self.edges if e["source"] in gone_nodes or e["target"] in gone_nodes}
        for e in self.edges:
            if e["id"] in gone_edges:
                still = [o for o in self.edges if o["id"] not in gone_edges and
                         (o["source"], o["source_port"]) == (e["source"], e["source_port"])]
                if not still:  # the port is not used any more: forget its name from code too
                    self.tensor_hints.pop((e["source"], e["source_port"]), None)
        self.edges = [e for e in self.edges if e["id"] not in gone_edges]
        self.steps = [s for s in self.steps if s["id"] not in gone_nodes]
        self.inputs = [t for t in self.inputs if input_id(t["name"]) not in gone_nodes]
        self.outputs = [t for t in self.outputs if output_id(t["name"]) not in gone_nodes]
        self.tensor_hints = {k: v for k, v in self.tensor_hints.items() if k[0] not in gone_nodes}
        return [i for i in ids if i in gone_nodes or i in gone_edges] + sorted(gone_edges - set(ids))

    def move(self, node_id: str, x: float, y: float) -> None:
        node = self.find(node_id)
        node["x"], node["y"] = int(round(x)), int(round(y))

    def layout(self) -> None:
        """Arrange every node left to right along the edges (see ``_layout.layered_layout``)."""
        sizes = {}
        for node_id in self.node_ids():
            if node_id in self.sizes:
                sizes[node_id] = self.sizes[node_id]
            elif node_id.startswith(("in:", "out:")):
                sizes[node_id] = IO_SIZE
            else:  # as the stylesheet draws a step: title, subtitle, one row per port
                step = self.find(node_id)
                sizes[node_id] = (STEP_WIDTH, 46 + 20 * (len(step["inputs"]) + len(step["outputs"])))
        positions = layered_layout(
            self.node_ids(),
            [(e["source"], e["target"]) for e in self.edges],
            sizes,
            first=[input_id(t["name"]) for t in self.inputs],
            last=[output_id(t["name"]) for t in self.outputs],
            origin=(20, 20),
        )
        for node_id, (x, y) in positions.items():
            self.move(node_id, x, y)

    # ------------------------------------------------------------------ registry
    def refresh(self, registry: Any) -> None:
        """Re-read every step's ports from the registry; a removed model keeps its last ports, marked missing."""
        for step in self.steps:
            try:
                entry = registry.get(step["model"]).get_version(None if step["version"] == -1 else step["version"])
            except ModelNotFound:
                step["missing"] = True
                step.setdefault("inputs", [])
                step.setdefault("outputs", [])
                continue
            step.update(
                missing=False,
                inputs=[_port(s) for s in entry.inputs],
                outputs=[_port(s) for s in entry.outputs],
                framework=entry.framework,
                max_batch_size=int(entry.config.max_batch_size),
            )

    # ------------------------------------------------------------------ checks
    def check(self, registry: Any) -> dict[str, str]:
        """Why each invalid edge is invalid: ``{edge id: reason}`` (valid edges are absent).

        Edges are checked in the order they were drawn, each against the valid edges before it.
        """
        errors: dict[str, str] = {}
        accepted: list[dict[str, Any]] = []
        for e in self.edges:
            reason = self._edge_problem(e, accepted, registry)
            if reason:
                errors[e["id"]] = reason
            else:
                accepted.append(e)
        return errors

    def _edge_problem(self, e: Mapping[str, Any], accepted: Sequence[Mapping[str, Any]], registry: Any) -> str | None:
        source, sport, target, tport = e["source"], e["source_port"], e["target"], e["target_port"]
        for node_id in (source, target):
            node = self.find(node_id)
            if not node_id.startswith(("in:", "out:")) and node.get("missing"):
                return (f"model '{node['model']}' is not registered (any more): register it again, "
                        f"or delete {_describe(node_id)}")
        if sport not in {p["name"] for p in self.source_ports(source)}:
            return (f"{_describe(source)} has no output '{sport}' any more (the model was re-registered): "
                    "delete this edge")
        if tport not in {p["name"] for p in self.target_ports(target)}:
            return (f"{_describe(target)} has no input '{tport}' any more (the model was re-registered): "
                    "delete this edge")
        if source.startswith("in:") and target.startswith("out:"):
            return (f"{_describe(source)} cannot be {_describe(target)} directly: Triton ensembles pass tensors "
                    "through steps; connect the output to a step's output port")
        for other in accepted:
            if (other["target"], other["target_port"]) == (target, tport):
                return (f"{_end(target, tport)} is already connected to {_end(other['source'], other['source_port'])}; "
                        "an input reads one tensor: delete the other edge first")
            if target.startswith("out:") and other["target"].startswith("out:") and (
                    other["source"], other["source_port"]) == (source, sport):
                return (f"{_end(source, sport)} already is {_describe(other['target'])}; a step output is one "
                        "tensor with one name: feed this output from another port, or delete it")
        # The rest (data types, shapes with the batch dimension, tensors written twice, cycles) is the
        # Ensemble's own judgement, asked on the ensemble the valid edges so far make. Steps are passed
        # by index: to_ensemble adds them in canvas order, and a model may run in several steps.
        ensemble = self.to_ensemble(registry, edges=accepted)
        src_step = None if source.startswith("in:") else self._step_index(source)
        dst_step = None if target.startswith("out:") else self._step_index(target)
        dst_tensor = target[4:] if target.startswith("out:") else tport
        return ensemble.edge_problem(src_step, sport, dst_step, dst_tensor, registry=registry)

    def _step_index(self, node_id: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s["id"] == node_id)

    def valid_edges(self, errors: Mapping[str, str]) -> list[dict[str, Any]]:
        return [e for e in self.edges if e["id"] not in errors]

    # ------------------------------------------------------------------ tensors
    def tensor_names(self, edges: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
        """The ensemble tensor each used source port writes, for the given (valid) edges."""
        names: dict[tuple[str, str], str] = {}
        taken = {t["name"] for t in self.inputs} | {t["name"] for t in self.outputs}
        for t in self.inputs:
            names[(input_id(t["name"]), t["name"])] = t["name"]
        for e in edges:
            if e["target"].startswith("out:"):
                names.setdefault((e["source"], e["source_port"]), e["target"][4:])
        ports = [(e["source"], e["source_port"]) for e in edges] + list(self.tensor_hints)
        for key in ports:
            if key in names:
                continue
            node, port = key
            qualified = f"{node.replace('*', '_')}_{port}"
            candidates = [self.tensor_hints.get(key), port, qualified]
            name = next((c for c in candidates if c and c not in taken), None)
            k = 2
            while name is None or name in taken:
                name, k = f"{qualified}_{k}", k + 1
            names[key] = name
            taken.add(name)
        return names

    # ------------------------------------------------------------------ Ensemble conversion
    def to_ensemble(self, registry: Any, *, edges: Sequence[Mapping[str, Any]] | None = None) -> Any:
        """The nbserve.Ensemble drawn by ``edges`` (default: every edge, valid or not)."""
        from ..ensemble import Ensemble

        edges = list(self.edges if edges is None else edges)
        names = self.tensor_names(edges)
        ensemble = Ensemble(self.name, max_batch_size=self.max_batch_size)
        for t in self.inputs:
            ensemble.input(t["name"], t["dtype"], t["dims"])
        for step in self.steps:
            inputs, outputs = self._step_maps(step, edges, names)
            ensemble.step(step["model"], inputs=inputs, outputs=outputs, version=step["version"])
        for t in self.outputs:
            if any(e["target"] == output_id(t["name"]) for e in edges):
                ensemble.output(t["name"])
        return ensemble

    def _step_maps(self, step: Mapping[str, Any], edges: Sequence[Mapping[str, Any]],
                   names: Mapping[tuple[str, str], str]) -> tuple[dict[str, str], dict[str, str]]:
        """A step's input_map and output_map: its connected ports (and outputs named in code)."""
        inputs = {e["target_port"]: names[(e["source"], e["source_port"])] for e in edges if e["target"] == step["id"]}
        used = {(e["source"], e["source_port"]) for e in edges}
        outputs = {}
        for port in step["outputs"]:
            key = (step["id"], port["name"])
            if key in names and (key in used or key in self.tensor_hints):
                outputs[port["name"]] = names[key]
        return inputs, outputs

    @classmethod
    def from_ensemble(cls, ensemble: Any, registry: Any) -> EnsembleGraph:
        """The canvas for an Ensemble built in code, laid out left to right.

        Raises:
            ConfigError: a step reads a tensor that no ensemble input and no step writes.
        """
        graph = cls(ensemble.name, max_batch_size=ensemble.max_batch_size)
        producers: dict[str, tuple[str, str]] = {}
        for spec in ensemble.inputs:
            node = graph.add_input(spec.name, spec.dtype, spec.dims, x=0, y=0)
            producers[spec.name] = (node, spec.name)
        for step in ensemble.steps:
            taken = {s["id"] for s in graph.steps}
            node_id, k = step.model, 1
            while node_id in taken:
                k += 1
                node_id = f"{step.model}*{k}"
            graph.steps.append({"id": node_id, "model": step.model, "version": int(step.version), "x": 0, "y": 0,
                                "inputs": [{"name": n, "dtype": None, "dims": None} for n in step.inputs],
                                "outputs": [{"name": n, "dtype": None, "dims": None} for n in step.outputs]})
            for port, tensor in step.outputs.items():
                producers[tensor] = (node_id, port)
                graph.tensor_hints[(node_id, port)] = tensor
        graph.refresh(registry)
        for step_node, step in zip(graph.steps, ensemble.steps, strict=True):
            for port, tensor in step.inputs.items():
                if tensor not in producers:
                    raise ConfigError(
                        f"step '{step.model}' reads tensor '{tensor}', which no ensemble input and no step writes",
                        model=ensemble.name, tensor=tensor,
                        hint=f"add ens.input('{tensor}', ...) or map a step output to '{tensor}'",
                    )
                graph._connect_loaded(*producers[tensor], step_node["id"], port)
        # Only the names are needed; Ensemble.outputs would also resolve dtypes, in nbserve's default
        # registry, and fail for models registered elsewhere.
        for name in ensemble._outputs:
            node = graph.add_output(name, x=0, y=0)
            if name in producers:
                graph._connect_loaded(*producers[name], node, name)
        graph.layout()
        return graph

    def _connect_loaded(self, source: str, source_port: str, target: str, target_port: str) -> None:
        # Ports of a model that is not registered come from the step's maps, so the edge always fits.
        self.edges.append({"id": f"e{self.next_edge}", "source": source, "source_port": source_port,
                           "target": target, "target_port": target_port})
        self.next_edge += 1

    # ------------------------------------------------------------------ views
    def code(self, errors: Mapping[str, str]) -> str:
        """Python that builds the same Ensemble as the valid edges on the canvas."""
        edges = self.valid_edges(errors)
        names = self.tensor_names(edges)
        args = f"{self.name!r}, max_batch_size={self.max_batch_size}"
        lines = ["import nbserve", "", f"ens = nbserve.Ensemble({args})"]
        for t in self.inputs:
            lines.append(f"ens.input({t['name']!r}, {t['dtype']!r}, {t['dims']!r})")
        for step in self.steps:
            inputs, outputs = self._step_maps(step, edges, names)
            version = "" if step["version"] == -1 else f", version={step['version']}"
            lines.append(f"ens.step({step['model']!r}, inputs={inputs!r}, outputs={outputs!r}{version})")
        for t in self.outputs:
            if any(e["target"] == output_id(t["name"]) for e in edges):
                lines.append(f"ens.output({t['name']!r})")
        lines += ["", "nbserve.register(ens)"]
        if errors:
            lines.insert(0, f"# {len(errors)} invalid edge{'s' if len(errors) > 1 else ''} left out (drawn red)")
        return "\n".join(lines) + "\n"

    def output_specs(self, errors: Mapping[str, str]) -> dict[str, dict[str, Any] | None]:
        """Each ensemble output's dtype and dims, taken from the port that feeds it (None if nothing does)."""
        result: dict[str, dict[str, Any] | None] = {t["name"]: None for t in self.outputs}
        for e in self.valid_edges(errors):
            if e["target"].startswith("out:"):
                port = next((p for p in self.source_ports(e["source"]) if p["name"] == e["source_port"]), None)
                if port is not None:
                    result[e["target"][4:]] = {"dtype": port["dtype"], "dims": port["dims"]}
        return result
