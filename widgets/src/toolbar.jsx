// Ensemble name, ensemble inputs/outputs, and the actions (layout, undo, register, run sample).
import { useEffect, useState } from "react";

const DTYPES = ["FP32", "FP16", "BF16", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
  "UINT64", "BOOL", "BYTES"];

function NameField({ value, onCommit }) {
  const [text, setText] = useState(value);
  useEffect(() => setText(value), [value]);
  const commit = () => {
    if (text !== value) onCommit(text);
  };
  return (
    <label className="nbs-eb-field">
      ensemble
      <input
        className="nbs-eb-name"
        value={text}
        spellCheck={false}
        onChange={(e) => setText(e.target.value)}
        onBlur={commit}
        onKeyDown={(e) => {
          if (e.key === "Enter") commit();
          if (e.key === "Escape") setText(value);
        }}
      />
    </label>
  );
}

function InputForm({ onAdd, onClose }) {
  const [name, setName] = useState("");
  const [dtype, setDtype] = useState("FP32");
  const [dims, setDims] = useState("-1");
  const submit = (e) => {
    e.preventDefault();
    onAdd({ name, dtype, dims: dims.split(",").map((d) => d.trim()).filter(Boolean) });
  };
  return (
    <form className="nbs-eb-form nbs-eb-input-form" onSubmit={submit}>
      <input placeholder="name" value={name} autoFocus onChange={(e) => setName(e.target.value)} />
      <select value={dtype} onChange={(e) => setDtype(e.target.value)}>
        {DTYPES.map((d) => (
          <option key={d}>{d}</option>
        ))}
      </select>
      <input
        className="nbs-eb-dims"
        placeholder="dims, e.g. -1, 16"
        title="dims without the batch dimension; -1 for a variable size"
        value={dims}
        onChange={(e) => setDims(e.target.value)}
      />
      <button type="submit">add</button>
      <button type="button" onClick={onClose}>
        cancel
      </button>
    </form>
  );
}

function OutputForm({ onAdd, onClose }) {
  const [name, setName] = useState("");
  const submit = (e) => {
    e.preventDefault();
    onAdd({ name });
  };
  return (
    <form className="nbs-eb-form nbs-eb-output-form" onSubmit={submit}>
      <input placeholder="name" value={name} autoFocus onChange={(e) => setName(e.target.value)} />
      <button type="submit">add</button>
      <button type="button" onClick={onClose}>
        cancel
      </button>
    </form>
  );
}

export function Toolbar({ name, busy, canUndo, showCode, run, onToggleCode }) {
  const [form, setForm] = useState(null); // "input" | "output" | null
  const add = (cmd) => async (args) => {
    const reply = await run(cmd, args);
    if (reply.ok) setForm(null);
  };
  return (
    <div className="nbs-eb-toolbar">
      <div className="nbs-eb-toolbar-row">
        <NameField value={name} onCommit={(value) => run("set_name", { name: value })} />
        <button className="nbs-eb-add-input" onClick={() => setForm(form === "input" ? null : "input")}>
          + input
        </button>
        <button className="nbs-eb-add-output" onClick={() => setForm(form === "output" ? null : "output")}>
          + output
        </button>
        <span className="nbs-eb-sep" />
        <button className="nbs-eb-layout" onClick={() => run("layout")} title="arrange the steps left to right">
          layout
        </button>
        <button className="nbs-eb-undo" disabled={!canUndo} onClick={() => run("undo")} title="undo (Ctrl+Z)">
          undo
        </button>
        <button className={`nbs-eb-code-toggle${showCode ? " active" : ""}`} onClick={onToggleCode}>
          code
        </button>
        <span className="nbs-eb-sep" />
        <button className="nbs-eb-register" disabled={busy} onClick={() => run("register")}>
          register
        </button>
        <button className="nbs-eb-run" disabled={busy} onClick={() => run("run_sample", {}, 300_000)}>
          run sample
        </button>
      </div>
      {form === "input" ? <InputForm onAdd={add("add_input")} onClose={() => setForm(null)} /> : null}
      {form === "output" ? <OutputForm onAdd={add("add_output")} onClose={() => setForm(null)} /> : null}
    </div>
  );
}
