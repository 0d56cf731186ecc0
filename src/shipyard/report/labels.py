"""Labels on a scatter plot that do not cover each other: a small greedy placer.

Each label tries places beside its point, then (names only) further out with a leader line,
and takes the first place that is inside the axes and covers no marker and no other label
(a leader line may cross a marker, not a label). A name that finds no free place takes the
least crowded one, since naming the point is what the plot is for; a row number is dropped.
"""

from __future__ import annotations

from typing import Any

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels

_GAP = 2.0  # pixels kept free around a label, so that "5" and "3" do not read as "53"
_LEADER = {"arrowstyle": "-", "color": "#9e9e9e", "lw": 0.7, "shrinkA": 1, "shrinkB": 5}
# Further places for a name (offsets in points): three distances in eight directions.
_DIRECTIONS = [
    (0.5, 1),
    (-0.5, 1),
    (0.5, -1),
    (-0.5, -1),
    (1, 0.3),
    (-1, 0.3),
    (1, -0.3),
    (-1, -0.3),
]
_FAR = [(dx * r, dy * r) for r in (24, 38, 54) for dx, dy in _DIRECTIONS]


class Labels:
    """Places labels on ``axes`` of ``figure`` (limits and layout final: pixels are used)."""

    def __init__(self, figure: Any, axes: Any) -> None:
        self.figure, self.axes = figure, axes
        self.renderer = figure.canvas.get_renderer()
        self.frame = axes.get_window_extent(self.renderer)
        self.markers: list[Box] = []
        self.labels: list[Box] = []

    def marker(self, xy: tuple[float, float], reach: float) -> None:
        """Keep labels off a marker at ``xy`` reaching ``reach`` points from its centre."""
        px, py = self.axes.transData.transform(xy)
        r = reach * self.figure.dpi / 72
        self.markers.append((px - r, py - r, px + r, py + r))

    def place(
        self, text: str, xy: tuple[float, float], reach: float, name: bool, **style: Any
    ) -> bool:
        """Label the point at ``xy`` (its marker reaching ``reach`` points); True if placed."""
        d = reach + 2
        near = [(d, d), (d, -d - 2), (-d, d), (-d, -d - 2)]
        px, py = self.axes.transData.transform(xy)
        best: tuple[float, float, float] | None = None
        for dx, dy in near + _FAR if name else near:
            label, box = self._draw(text, xy, dx, dy, False, style)
            label.remove()
            leader = [] if (dx, dy) in near else _along(px, py, box, dx > 0, 2 * d)
            cost = self._cost(box, leader)
            if cost == 0:
                self._keep(text, xy, dx, dy, bool(leader), style, leader)
                return True
            if best is None or cost < best[0]:
                best = (cost, dx, dy)
        if not name or best is None:
            return False
        _, dx, dy = best
        far = (dx, dy) not in near
        _, box = self._draw(text, xy, dx, dy, far, style)
        self._keep(text, xy, dx, dy, far, style, _along(px, py, box, dx > 0, 2 * d) if far else [])
        return True

    def _draw(
        self, text: str, xy: tuple[float, float], dx: float, dy: float, leader: bool, style: Any
    ) -> tuple[Any, Box]:
        label = self.axes.annotate(
            text,
            xy,
            xytext=(dx, dy),
            textcoords="offset points",
            ha="left" if dx > 0 else "right",
            va="center",
            **style,
            **({"arrowprops": _LEADER} if leader else {}),
        )
        box = label.get_window_extent(self.renderer).padded(_GAP)
        return label, (box.x0, box.y0, box.x1, box.y1)

    def _keep(
        self,
        text: str,
        xy: tuple[float, float],
        dx: float,
        dy: float,
        leader: bool,
        style: Any,
        line: list[Box],
    ) -> None:
        _, box = self._draw(text, xy, dx, dy, leader, style)
        self.labels += [box, *line]  # the leader too: later labels must not cover it

    def _cost(self, box: Box, leader: list[Box]) -> int:
        f = self.frame
        outside = not (f.x0 <= box[0] and box[2] <= f.x1 and f.y0 <= box[1] and box[3] <= f.y1)
        on_labels = sum(_overlaps(b, other) for b in [box, *leader] for other in self.labels)
        on_markers = sum(_overlaps(box, other) for other in self.markers)
        return 1000 * outside + 100 * on_labels + 10 * on_markers


def _along(px: float, py: float, box: Box, left: bool, skip: float) -> list[Box]:
    """Small boxes along a leader line from the point (``px``, ``py``) to its label's edge,
    from ``skip`` pixels out (past the point's own marker)."""
    ex, ey = (box[0] if left else box[2]), (box[1] + box[3]) / 2
    length = ((ex - px) ** 2 + (ey - py) ** 2) ** 0.5
    boxes = []
    for step in range(int(skip), int(length), 4):
        x, y = px + (ex - px) * step / length, py + (ey - py) * step / length
        boxes.append((x - 1, y - 1, x + 1, y + 1))
    return boxes


def _overlaps(box: Box, other: Box) -> bool:
    return box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]
