// The three kinds of node on the canvas: a model step, an ensemble input, an ensemble output.
// Every port is a React Flow handle whose id is the tensor's name in the model (or the ensemble).
import { Handle, Position } from "@xyflow/react";

export const dimsText = (dims) => (dims == null ? "?" : `[${dims.join(", ")}]`);

export function formatMicros(us) {
  if (us == null) return "–";
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(us < 10_000 ? 2 : 1)} ms`;
  return `${(us / 1_000_000).toFixed(2)} s`;
}

function Preview({ value }) {
  if (!value) return null;
  return (
    <div className="nbs-eb-preview" title={`${value.dtype} ${dimsText(value.shape)}\n${value.text}`}>
      = {value.text}
    </div>
  );
}

function Port({ port, side, preview, connected }) {
  const isInput = side === "in";
  return (
    <div className={`nbs-eb-port nbs-eb-port-${side}`} data-port={port.name}>
      <Handle
        type={isInput ? "target" : "source"}
        position={isInput ? Position.Left : Position.Right}
        id={port.name}
        className={connected ? "nbs-eb-handle connected" : "nbs-eb-handle"}
      />
      <span className="nbs-eb-port-name">{port.name}</span>
      <span className="nbs-eb-port-type">
        {port.dtype} {dimsText(port.dims)}
      </span>
      {preview ? <Preview value={preview} /> : null}
    </div>
  );
}

export function StepNode({ id, data, selected }) {
  const { node, sample, connected } = data;
  const run = sample && sample.steps ? sample.steps[id] : null;
  const classes = ["nbs-eb-node", "nbs-eb-step"];
  if (node.missing) classes.push("missing");
  if (selected) classes.push("selected");
  if (run) classes.push("has-sample");
  return (
    <div className={classes.join(" ")} data-node-id={id}>
      <div className="nbs-eb-node-title">
        <span className="nbs-eb-node-model">{node.model}</span>
        <span className="nbs-eb-node-version">{node.version > 0 ? `v${node.version}` : "latest"}</span>
      </div>
      {node.missing ? (
        <div className="nbs-eb-node-warning">not registered: register it or delete this step</div>
      ) : (
        <div className="nbs-eb-node-sub">
          {node.framework || ""}
          {node.max_batch_size > 0 ? ` · max batch ${node.max_batch_size}` : " · no batching"}
        </div>
      )}
      <div className="nbs-eb-ports">
        {node.inputs.map((p) => (
          <Port key={`in-${p.name}`} port={p} side="in" connected={connected.has(`in:${p.name}`)} />
        ))}
        {node.outputs.map((p) => (
          <Port
            key={`out-${p.name}`}
            port={p}
            side="out"
            connected={connected.has(`out:${p.name}`)}
            preview={run && run.outputs ? run.outputs[p.name] : null}
          />
        ))}
      </div>
      {run ? (
        <div className="nbs-eb-timing" data-queue-us={run.queue_us} data-compute-us={run.compute_us}>
          queue {formatMicros(run.queue_us)} · compute {formatMicros(run.compute_us)}
        </div>
      ) : null}
    </div>
  );
}

export function InputNode({ id, data, selected }) {
  const { tensor, sample } = data;
  const preview = sample && sample.inputs ? sample.inputs[tensor.name] : null;
  return (
    <div className={`nbs-eb-node nbs-eb-io nbs-eb-input${selected ? " selected" : ""}`} data-node-id={id}>
      <div className="nbs-eb-io-kind">ensemble input</div>
      <div className="nbs-eb-port nbs-eb-port-out" data-port={tensor.name}>
        <span className="nbs-eb-port-name">{tensor.name}</span>
        <span className="nbs-eb-port-type">
          {tensor.dtype} {dimsText(tensor.dims)}
        </span>
        <Handle type="source" position={Position.Right} id={tensor.name} className="nbs-eb-handle" />
        {preview ? <Preview value={preview} /> : null}
      </div>
    </div>
  );
}

export function OutputNode({ id, data, selected }) {
  const { tensor, sample } = data;
  const preview = sample && sample.outputs ? sample.outputs[tensor.name] : null;
  return (
    <div className={`nbs-eb-node nbs-eb-io nbs-eb-output${selected ? " selected" : ""}`} data-node-id={id}>
      <div className="nbs-eb-io-kind">ensemble output</div>
      <div className="nbs-eb-port nbs-eb-port-in" data-port={tensor.name}>
        <Handle type="target" position={Position.Left} id={tensor.name} className="nbs-eb-handle" />
        <span className="nbs-eb-port-name">{tensor.name}</span>
        <span className="nbs-eb-port-type">
          {tensor.dtype ? `${tensor.dtype} ${dimsText(tensor.dims)}` : "not connected"}
        </span>
        {preview ? <Preview value={preview} /> : null}
      </div>
    </div>
  );
}

// Not "input"/"output": React Flow styles its built-in node types by those names.
export const nodeTypes = { step: StepNode, ensembleInput: InputNode, ensembleOutput: OutputNode };
