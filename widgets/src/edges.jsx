// A connection between two ports. Valid edges carry the ensemble tensor's name as their label; an
// invalid edge is drawn red with a warning sign, and hovering the edge or the sign shows the reason
// the kernel gave when the edge was checked.
import { BaseEdge, EdgeLabelRenderer, getBezierPath } from "@xyflow/react";

export function TensorEdge(props) {
  const { id, sourceX, sourceY, targetX, targetY, sourcePosition, targetPosition, data, selected } = props;
  const [path, labelX, labelY] = getBezierPath({ sourceX, sourceY, targetX, targetY, sourcePosition, targetPosition });
  const error = data && data.error;
  const hovered = data && data.hovered;
  // Short edges between neighbours would pile their labels up: name the tensor on long ones only.
  const showLabel = error || selected || hovered || Math.hypot(targetX - sourceX, targetY - sourceY) > 150;
  const classes = ["nbs-eb-edge-label", "nodrag", "nopan"];
  if (error) classes.push("invalid");
  if (selected) classes.push("selected");
  return (
    <>
      <BaseEdge
        id={id}
        path={path}
        interactionWidth={22}
        className={error ? "nbs-eb-edge invalid" : "nbs-eb-edge"}
        style={{ strokeWidth: selected ? 3 : 2 }}
      />
      {showLabel ? (
        <EdgeLabelRenderer>
          <div
            className={classes.join(" ")}
            data-edge-id={id}
            style={{ transform: `translate(-50%, -50%) translate(${labelX}px, ${labelY}px)` }}
            onMouseEnter={() => data.onHover(id)}
            onMouseLeave={() => data.onHover(null)}
            onClick={() => data.onSelect(id)}
          >
            {error ? "⚠" : data.tensor}
            {error && hovered ? (
              <div className="nbs-eb-edge-tooltip" role="tooltip" data-edge-id={id}>
                {error}
              </div>
            ) : null}
          </div>
        </EdgeLabelRenderer>
      ) : null}
    </>
  );
}

export const edgeTypes = { tensor: TensorEdge };
