// nbserve.EnsembleBuilder: a drag-and-drop editor for Triton ensembles (anywidget + React Flow).
//
// The kernel holds the one true state. The canvas renders the traitlets (palette, nodes, edges,
// ensemble_inputs, ensemble_outputs, edge_errors, sample, code) and turns every user action into a
// command (see commands.js); the kernel applies it, checks it, records it for undo and pushes the
// new state back. Only transient UI state lives here: selection, node positions while dragging,
// the hovered edge, open forms.
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import {
  Background,
  Controls,
  ReactFlow,
  ReactFlowProvider,
  applyEdgeChanges,
  applyNodeChanges,
  useReactFlow,
} from "@xyflow/react";

import { createCommander } from "./commands.js";
import { edgeTypes } from "./edges.jsx";
import { nodeTypes } from "./nodes.jsx";
import { Palette } from "./palette.jsx";
import { Toolbar } from "./toolbar.jsx";

function useTrait(model, name) {
  const [value, setValue] = useState(() => model.get(name));
  useEffect(() => {
    const update = () => setValue(model.get(name));
    model.on(`change:${name}`, update);
    update(); // a change between the first render and this effect is not lost
    return () => model.off(`change:${name}`, update);
  }, [model, name]);
  return value;
}

// Which ports of each node have an edge: drawn as filled handles.
function connectedPorts(edges) {
  const byNode = new Map();
  const mark = (node, key) => {
    if (!byNode.has(node)) byNode.set(node, new Set());
    byNode.get(node).add(key);
  };
  for (const e of edges) {
    mark(e.source, `out:${e.source_port}`);
    mark(e.target, `in:${e.target_port}`);
  }
  return byNode;
}

function buildNodes(steps, inputs, outputs, edges, sample) {
  const connected = connectedPorts(edges);
  const none = new Set();
  return [
    ...inputs.map((t) => ({
      id: `in:${t.name}`,
      type: "ensembleInput",
      position: { x: t.x, y: t.y },
      data: { tensor: t, sample },
    })),
    ...steps.map((n) => ({
      id: n.id,
      type: "step",
      position: { x: n.x, y: n.y },
      data: { node: n, sample, connected: connected.get(n.id) || none },
    })),
    ...outputs.map((t) => ({
      id: `out:${t.name}`,
      type: "ensembleOutput",
      position: { x: t.x, y: t.y },
      data: { tensor: t, sample },
    })),
  ];
}

function isDarkTheme() {
  return document.body && document.body.dataset && document.body.dataset.jpThemeLight === "false";
}

function Builder({ model, commander }) {
  const palette = useTrait(model, "palette");
  const steps = useTrait(model, "nodes");
  const edges = useTrait(model, "edges");
  const inputs = useTrait(model, "ensemble_inputs");
  const outputs = useTrait(model, "ensemble_outputs");
  const edgeErrors = useTrait(model, "edge_errors");
  const sample = useTrait(model, "sample");
  const code = useTrait(model, "code");
  const name = useTrait(model, "name");
  const canUndo = useTrait(model, "can_undo");

  const { screenToFlowPosition, fitView } = useReactFlow();
  const rootRef = useRef(null);
  const canvasRef = useRef(null);
  const [rfNodes, setRfNodes] = useState([]);
  const [rfEdges, setRfEdges] = useState([]);
  const [hoveredEdge, setHoveredEdge] = useState(null);
  const [status, setStatus] = useState({ kind: "info", text: "" });
  const [busy, setBusy] = useState(false);
  const [showCode, setShowCode] = useState(false);
  const [ghost, setGhost] = useState(null);

  const run = useCallback(
    async (cmd, args = {}, timeoutMs) => {
      const slow = cmd === "register" || cmd === "run_sample";
      if (slow) {
        setBusy(true);
        setStatus({ kind: "info", text: cmd === "register" ? "registering…" : "running a sample…" });
      }
      const reply = await commander.send(cmd, args, timeoutMs);
      if (slow) setBusy(false);
      if (!reply.ok) setStatus({ kind: "error", text: reply.error || `${cmd} failed` });
      else if (reply.message) setStatus({ kind: reply.warning ? "warning" : "info", text: reply.message });
      return reply;
    },
    [commander, fitView],
  );

  // Kernel state -> React Flow nodes, keeping what only the browser knows (selection, sizes, a drag).
  useEffect(() => {
    const built = buildNodes(steps, inputs, outputs, edges, sample);
    setRfNodes((previous) => {
      const byId = new Map(previous.map((n) => [n.id, n]));
      return built.map((n) => {
        const old = byId.get(n.id);
        if (!old) return n;
        return {
          ...n,
          selected: old.selected,
          measured: old.measured,
          dragging: old.dragging,
          position: old.dragging ? old.position : n.position,
        };
      });
    });
  }, [steps, inputs, outputs, edges, sample]);

  const selectEdge = useCallback((id) => {
    setRfEdges((es) => es.map((e) => ({ ...e, selected: e.id === id })));
    setRfNodes((ns) => ns.map((n) => (n.selected ? { ...n, selected: false } : n)));
  }, []);

  useEffect(() => {
    setRfEdges((previous) => {
      const selected = new Set(previous.filter((e) => e.selected).map((e) => e.id));
      return edges.map((e) => ({
        id: e.id,
        type: "tensor",
        source: e.source,
        sourceHandle: e.source_port,
        target: e.target,
        targetHandle: e.target_port,
        selected: selected.has(e.id),
        className: edgeErrors[e.id] ? "invalid" : "valid",
        data: {
          tensor: e.tensor,
          error: edgeErrors[e.id] || null,
          hovered: false,
          onHover: setHoveredEdge,
          onSelect: selectEdge,
        },
      }));
    });
  }, [edges, edgeErrors, selectEdge]);

  // Node sizes as drawn (they grow with sample previews) go to the kernel, for its automatic layout.
  const reportedSizes = useRef({});
  useEffect(() => {
    const sizes = {};
    let changed = false;
    for (const n of rfNodes) {
      if (!n.measured || !n.measured.width) continue;
      const size = [Math.round(n.measured.width), Math.round(n.measured.height)];
      const old = reportedSizes.current[n.id];
      if (!old || Math.abs(old[0] - size[0]) > 2 || Math.abs(old[1] - size[1]) > 2) changed = true;
      sizes[n.id] = size;
    }
    if (!changed) return undefined;
    const timer = setTimeout(() => {
      reportedSizes.current = sizes;
      commander.send("sizes", { sizes });
    }, 250);
    return () => clearTimeout(timer);
  }, [rfNodes, commander]);

  // The hovered edge only changes its data; keep it out of the effect above.
  const shownEdges = useMemo(
    () => rfEdges.map((e) => (e.id === hoveredEdge ? { ...e, data: { ...e.data, hovered: true } } : e)),
    [rfEdges, hoveredEdge],
  );

  // The kernel asks for the whole graph in view after a layout or after loading an ensemble.
  useEffect(() => {
    const onEvent = (msg) => {
      if (msg && msg.event === "fit_view") window.requestAnimationFrame(() => fitView({ maxZoom: 1, duration: 150 }));
    };
    model.on("msg:custom", onEvent);
    return () => model.off("msg:custom", onEvent);
  }, [model, fitView]);

  useEffect(() => {
    if (steps.length + inputs.length + outputs.length > 0) {
      window.requestAnimationFrame(() => fitView({ maxZoom: 1 }));
    }
    // Only when the builder first shows: later changes keep the user's viewport.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  const onNodesChange = useCallback((changes) => {
    // Deleting goes through the kernel (undo, edge checks); everything else is local until a drag ends.
    setRfNodes((ns) => applyNodeChanges(changes.filter((c) => c.type !== "remove"), ns));
  }, []);
  const onEdgesChange = useCallback((changes) => {
    setRfEdges((es) => applyEdgeChanges(changes.filter((c) => c.type !== "remove"), es));
  }, []);

  const onNodeDragStop = useCallback(
    (_event, _node, dragged) => {
      const moves = dragged.map((n) => ({ id: n.id, x: Math.round(n.position.x), y: Math.round(n.position.y) }));
      run("move", { moves });
    },
    [run],
  );

  const onConnect = useCallback(
    (c) => run("connect", { source: c.source, source_port: c.sourceHandle, target: c.target, target_port: c.targetHandle }),
    [run],
  );

  // A connection dropped on empty canvas exposes the port: an input port becomes an ensemble input,
  // an output port an ensemble output, named after the port and already connected.
  const onConnectEnd = useCallback(
    (event, state) => {
      if (state.toHandle || !state.fromHandle || !state.fromNode || state.fromNode.type !== "step") return;
      const point = event.changedTouches ? event.changedTouches[0] : event;
      const target = event.target instanceof Element ? event.target : null;
      // Only a drop on empty canvas: not on a node, a control, or outside the builder.
      if (!target || !canvasRef.current.contains(target)) return;
      if (target.closest(".react-flow__node, .react-flow__controls, .nbs-eb-edge-label")) return;
      const p = screenToFlowPosition({ x: point.clientX, y: point.clientY });
      const cmd = state.fromHandle.type === "target" ? "expose_input" : "expose_output";
      // The new node's port lands where the connection was dropped.
      const x = Math.round(p.x) - (cmd === "expose_input" ? 170 : 0);
      run(cmd, { node: state.fromNode.id, port: state.fromHandle.id, x, y: Math.round(p.y) - 20 });
    },
    [run, screenToFlowPosition],
  );

  const addStep = useCallback((entry, position) => run("add_step", { model: entry.name, ...(position || {}) }), [run]);

  const startPaletteDrag = useCallback(
    (event, entry) => {
      if (event.button !== 0) return;
      event.preventDefault();
      const start = { x: event.clientX, y: event.clientY };
      let moved = false;
      const move = (e) => {
        if (!moved && Math.hypot(e.clientX - start.x, e.clientY - start.y) < 5) return;
        moved = true;
        const r = rootRef.current.getBoundingClientRect();
        setGhost({ name: entry.name, x: e.clientX - r.left, y: e.clientY - r.top });
      };
      const up = (e) => {
        window.removeEventListener("pointermove", move);
        window.removeEventListener("pointerup", up);
        window.removeEventListener("pointercancel", up);
        setGhost(null);
        if (!moved) {
          addStep(entry, null); // a click: the kernel picks a free spot
          return;
        }
        if (e.type === "pointercancel") return;
        const c = canvasRef.current.getBoundingClientRect();
        if (e.clientX < c.left || e.clientX > c.right || e.clientY < c.top || e.clientY > c.bottom) return;
        const p = screenToFlowPosition({ x: e.clientX, y: e.clientY });
        // The pointer holds the node near its title, where it was grabbed in the palette.
        addStep(entry, { x: Math.round(p.x) - 20, y: Math.round(p.y) - 12 });
      };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
      window.addEventListener("pointercancel", up);
    },
    [addStep, screenToFlowPosition],
  );

  const onKeyDown = (event) => {
    if (event.target instanceof Element && event.target.closest("input, select, textarea")) return;
    const key = event.key;
    if (key === "Delete" || key === "Backspace") {
      const nodes = rfNodes.filter((n) => n.selected).map((n) => n.id);
      const gone = new Set(nodes);
      const removed = rfEdges.filter((e) => e.selected && !gone.has(e.source) && !gone.has(e.target)).map((e) => e.id);
      if (nodes.length || removed.length) {
        event.preventDefault();
        run("delete", { nodes, edges: removed });
      }
    } else if ((event.ctrlKey || event.metaKey) && !event.shiftKey && key.toLowerCase() === "z") {
      event.preventDefault();
      run("undo");
    }
  };

  const focusRoot = (event) => {
    const t = event.target;
    if (t instanceof Element && t.closest("input, select, textarea, button")) return;
    if (!rootRef.current.contains(document.activeElement) || document.activeElement === document.body) {
      rootRef.current.focus({ preventScroll: true });
    }
  };

  const failed = sample && sample.error ? sample.error : null;
  return (
    <div
      className="nbs-eb-root"
      ref={rootRef}
      tabIndex={0}
      onKeyDown={onKeyDown}
      onPointerDownCapture={focusRoot}
      data-busy={busy ? "true" : "false"}
    >
      <Toolbar
        name={name}
        busy={busy}
        canUndo={canUndo}
        showCode={showCode}
        run={run}
        onToggleCode={() => setShowCode((v) => !v)}
      />
      <div className="nbs-eb-main">
        <Palette entries={palette} onPointerDown={startPaletteDrag} onAdd={(entry) => addStep(entry, null)} />
        <div className="nbs-eb-canvas" ref={canvasRef}>
          <ReactFlow
            nodes={rfNodes}
            edges={shownEdges}
            nodeTypes={nodeTypes}
            edgeTypes={edgeTypes}
            onNodesChange={onNodesChange}
            onEdgesChange={onEdgesChange}
            onNodeDragStop={onNodeDragStop}
            onConnect={onConnect}
            onConnectEnd={onConnectEnd}
            onEdgeMouseEnter={(_e, edge) => setHoveredEdge(edge.id)}
            onEdgeMouseLeave={() => setHoveredEdge(null)}
            deleteKeyCode={null}
            minZoom={0.2}
            maxZoom={2}
            colorMode={isDarkTheme() ? "dark" : "light"}
            proOptions={{ hideAttribution: true }}
          >
            <Background gap={20} size={1} />
            <Controls showInteractive={false} />
          </ReactFlow>
        </div>
      </div>
      {showCode ? <pre className="nbs-eb-code">{code}</pre> : null}
      <div className={`nbs-eb-status ${failed ? "error" : status.kind}`} role="status">
        {failed ? `sample failed: ${failed}` : status.text}
      </div>
      {ghost ? (
        <div className="nbs-eb-ghost" style={{ left: ghost.x, top: ghost.y }}>
          {ghost.name}
        </div>
      ) : null}
    </div>
  );
}

const MODIFIER_KEYS = new Set(["Shift", "Control", "Alt", "Meta"]);

function render({ model, el }) {
  // Keys typed in the builder belong to it: without this JupyterLab would also read them as
  // notebook shortcuts (Backspace, "a", "b", "z" ... in command mode). Modifier keys still reach
  // React Flow's document listeners (Shift-drag selects a box).
  el.setAttribute("data-lm-suppress-shortcuts", "true");
  const keepKeys = (event) => {
    if (!MODIFIER_KEYS.has(event.key)) event.stopPropagation();
  };
  el.addEventListener("keydown", keepKeys);
  const mount = document.createElement("div");
  mount.className = "nbs-eb-host";
  el.appendChild(mount);
  const commander = createCommander(model);
  const root = createRoot(mount);
  root.render(
    <ReactFlowProvider>
      <Builder model={model} commander={commander} />
    </ReactFlowProvider>,
  );
  return () => {
    root.unmount();
    commander.dispose();
    el.removeEventListener("keydown", keepKeys);
    mount.remove();
  };
}

export default { render };
