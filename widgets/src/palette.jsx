// The registered models. Drag one onto the canvas (pointer events, so it works the same with a
// mouse, a pen or a touch screen), or click it / press Enter on it to add it at a free spot.
import { dimsText } from "./nodes.jsx";

const signature = (ports) => ports.map((p) => `${p.name} ${p.dtype} ${dimsText(p.dims)}`).join(", ");

export function Palette({ entries, onPointerDown, onAdd }) {
  return (
    <div className="nbs-eb-palette" aria-label="registered models">
      <div className="nbs-eb-palette-title">Models</div>
      {entries.length === 0 ? (
        <div className="nbs-eb-palette-empty">
          No models registered yet: <code>nbserve.register(obj, name=...)</code> and they appear here.
        </div>
      ) : null}
      {entries.map((entry) => (
        <div
          key={entry.name}
          className="nbs-eb-palette-item"
          data-model={entry.name}
          role="button"
          tabIndex={0}
          title={`${entry.name} v${entry.version} (${entry.framework})\nin: ${signature(entry.inputs)}\nout: ${signature(entry.outputs)}`}
          onPointerDown={(event) => onPointerDown(event, entry)}
          onKeyDown={(event) => {
            if (event.key === "Enter" || event.key === " ") {
              event.preventDefault();
              onAdd(entry);
            }
          }}
        >
          <div className="nbs-eb-palette-name">{entry.name}</div>
          <div className="nbs-eb-palette-meta">
            v{entry.version} · {entry.framework}
          </div>
          <div className="nbs-eb-palette-sig">
            {entry.inputs.map((p) => p.name).join(", ")} → {entry.outputs.map((p) => p.name).join(", ")}
          </div>
        </div>
      ))}
    </div>
  );
}
