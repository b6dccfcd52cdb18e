"""Automatic left-to-right layout of an ensemble graph (for ensembles built in code).

A layered ("Sugiyama"-style) layout small enough to read: every node goes one column right of its
furthest producer, ensemble inputs go just left of their first reader and ensemble outputs take
the last column, nodes in a column are ordered by the mean row of their producers, and columns
are centred on each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["layered_layout"]

COLUMN_GAP = 80  # px between the right edge of one column and the left of the next
ROW_GAP = 36  # px between nodes in a column


def _layers(nodes: Sequence[str], edges: Iterable[tuple[str, str]], first: set[str], last: set[str]) -> dict[str, int]:
    known = set(nodes)
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for source, target in edges:
        if source in known and target in known and source != target:
            preds[target].append(source)
    layer: dict[str, int] = {}
    visiting: set[str] = set()

    def depth(node: str) -> int:
        if node in layer:
            return layer[node]
        if node in first:
            layer[node] = 0
            return 0
        visiting.add(node)
        # An edge back into a node still being visited closes a cycle: ignore it so the layout
        # still places every node (the edge itself is flagged invalid elsewhere).
        # A step nothing feeds yet still goes right of the inputs' column.
        d = max((depth(p) + 1 for p in preds[node] if p not in visiting), default=1 if first else 0)
        visiting.discard(node)
        layer[node] = d
        return d

    for node in nodes:
        depth(node)
    # An input that only late steps read sits just left of its first reader, not in column 0 with a
    # long edge running behind the steps in between.
    for node in first:
        readers = [layer[t] for s, t in edges if s == node and t in layer and t not in first]
        if readers:
            layer[node] = max(0, min(readers) - 1)
    if last:
        end = max((layer[n] for n in nodes if n not in last), default=0) + 1
        for node in last:
            layer[node] = end
    return layer


def layered_layout(
    nodes: Sequence[str],
    edges: Iterable[tuple[str, str]],
    sizes: Mapping[str, tuple[int, int]],
    *,
    first: Iterable[str] = (),
    last: Iterable[str] = (),
    origin: tuple[int, int] = (0, 0),
) -> dict[str, tuple[int, int]]:
    """Positions (top-left corners) for ``nodes`` so that every edge points left to right.

    Args:
        nodes: node ids, in a stable order (ties keep this order).
        edges: (source, target) pairs; edges to unknown nodes and edges closing a cycle are ignored.
        sizes: estimated (width, height) of each node in pixels.
        first: nodes that have no producers (ensemble inputs): each goes one column left of its first reader.
        last: nodes pinned to the last column (ensemble outputs).
        origin: where the top-left of the drawing goes.

    Returns:
        ``{node: (x, y)}`` in integer pixels.

    >>> layered_layout(["a", "b", "c"], [("a", "b"), ("a", "c")], {n: (100, 50) for n in "abc"})
    {'a': (0, 43), 'b': (180, 0), 'c': (180, 86)}
    """
    edges = list(edges)
    first, last = set(first), set(last)
    layer = _layers(nodes, edges, first, last)
    order = {n: i for i, n in enumerate(nodes)}
    columns: dict[int, list[str]] = {}
    for node in nodes:
        columns.setdefault(layer[node], []).append(node)
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for source, target in edges:
        if source in preds and target in preds:
            preds[target].append(source)

    # Order each column by the mean row of its producers in the column before (barycentre).
    row: dict[str, float] = {}
    for index in sorted(columns):
        column = columns[index]

        def key(node: str) -> tuple[float, int]:
            placed = [row[p] for p in preds[node] if p in row]
            return (sum(placed) / len(placed) if placed else float(order[node]), order[node])

        column.sort(key=key)
        for position, node in enumerate(column):
            row[node] = position

    heights = {i: sum(sizes[n][1] for n in col) + ROW_GAP * (len(col) - 1) for i, col in columns.items()}
    tallest = max(heights.values(), default=0)
    positions: dict[str, tuple[int, int]] = {}
    x = origin[0]
    for index in sorted(columns):
        column = columns[index]
        y = origin[1] + (tallest - heights[index]) // 2
        for node in column:
            positions[node] = (x, y)
            y += sizes[node][1] + ROW_GAP
        x += max(sizes[n][0] for n in column) + COLUMN_GAP
    return positions

