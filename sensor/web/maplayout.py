"""Geometry of the communication map: grouped panels of a grid of node cells.

Pure arithmetic on counts of text lines, so it is deterministic and testable without a
browser. Each node is a *cell*: its box (address, role, identity, alert lines) and,
under the box, one line per wrapped label of the edges that arrive at it. Cells of a
group are laid out row-major in a grid (row height: its tallest cell); groups are
panels packed left to right on shelves no wider than :func:`shelf_width`: wide enough
that the whole map is about as wide as a screen is (so "whole map" shows its shape,
not a ribbon), between ``MIN_WIDTH`` and ``MAX_WIDTH``. Nothing is placed
where anything else is: the cells of a grid never share a pixel, nor do the panels of
a shelf, and an edge label lives inside its target's cell. That is what keeps 1,000
nodes readable where two fixed columns were not.

Text is monospace, so its width is known here: ``CHAR_EM`` is a little more than the
advance of the common monospace fonts (DejaVu Sans Mono, Liberation Mono, Courier New,
Menlo: 0.60 em), and the browser test checks that the real font stays inside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CHAR_EM = 0.62
FONT, TITLE_FONT, LINE = 12, 13, 16  # px: label and address font sizes, line pitch
PAD = 8  # inside a box
LABEL_INDENT = 12  # edge labels start right of their arrowhead
MIN_CHARS = 34  # a box is at least this many label characters wide
COL_GAP, ROW_GAP = 44, 26  # between cells: room for the edges
PANEL_PAD, PANEL_HEAD_TOP, PANEL_GAP = 14, 20, 24  # heading baseline below the top
MARGIN = 16
SMALL_GROUP = 6  # a group of up to this many cells is one row
MIN_WIDTH, MAX_WIDTH = 1800, 6400  # px: shelves wrap within these (a lone box may be wider)
ASPECT = 1.6  # the width:height the shelf width aims at


def text_width(chars: int, size: int = FONT) -> float:
    """The most ``chars`` monospace characters at ``size`` px take."""
    return chars * size * CHAR_EM


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    def overlaps(self, other: Rect) -> bool:
        return (self.x < other.x + other.w and other.x < self.x + self.w
                and self.y < other.y + other.h and other.y < self.y + self.h)

    def contains(self, other: Rect) -> bool:
        return (self.x <= other.x and self.y <= other.y
                and other.x + other.w <= self.x + self.w
                and other.y + other.h <= self.y + self.h)


@dataclass(frozen=True, slots=True)
class CellSpec:
    """What one node needs: its box's text lines and the edge label lines under it."""

    key: str
    box_lines: int  # the address line counts as one
    label_lines: int = 0


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """One panel: its heading (wrapped here, to the panel's width) and its cells."""

    key: str
    heading: str
    cells: Sequence[CellSpec]


@dataclass(frozen=True, slots=True)
class Cell:
    key: str
    box: Rect
    labels: Rect | None  # where the incoming edge labels go (None: none)

    @property
    def outline(self) -> Rect:
        """Everything this cell may draw into."""
        if self.labels is None:
            return self.box
        return Rect(self.box.x, self.box.y, self.box.w,
                    self.labels.y + self.labels.h - self.box.y)


@dataclass(frozen=True, slots=True)
class Panel:
    key: str
    rect: Rect
    heading: tuple[str, ...]  # its lines, the first at rect.y + PANEL_HEAD_TOP
    cells: tuple[Cell, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    width: float
    height: float
    box_width: float
    chars: int  # label characters per line in a box (what the caller wraps to)
    label_chars: int  # and per line of an edge label (indented under the box)
    panels: tuple[Panel, ...]


def box_chars(longest_title: int) -> int:
    """Label characters per box line: enough for the longest address at its larger font."""
    need = math.ceil(longest_title * TITLE_FONT / FONT)
    return max(MIN_CHARS, need)


def box_height(lines: int) -> float:
    return 2 * PAD + max(1, lines) * LINE


def labels_height(lines: int) -> float:
    return 4 + lines * LINE


def grid_columns(count: int, most: int) -> int:
    """Columns of a panel of ``count`` cells, at most ``most``: one row for a small
    group, then about twice as wide as tall (in cells)."""
    if count <= SMALL_GROUP:
        return max(1, min(count, most))
    return max(1, min(most, max(3, math.ceil(math.sqrt(2 * count)))))


def shelf_width(groups: Sequence[GroupSpec], box_w: float) -> float:
    """How wide a shelf of panels may be: the estimated area of the map at ``ASPECT``."""
    area = 0.0
    for group in groups:
        for spec in group.cells:
            tall = box_height(spec.box_lines) + (labels_height(spec.label_lines)
                                                 if spec.label_lines else 0)
            area += (box_w + COL_GAP) * (tall + ROW_GAP)
    area *= 1.3  # panels' padding and headings, and rows' uneven heights
    return max(MIN_WIDTH, min(MAX_WIDTH, math.sqrt(area * ASPECT)))


def label_chars(chars: int) -> int:
    """Characters per edge-label line under a box ``chars`` characters wide."""
    return int((text_width(chars) + PAD - LABEL_INDENT) // text_width(1))


def layout(groups: Sequence[GroupSpec], chars: int) -> Layout:
    """Place ``groups`` (in order, cells in order) with boxes ``chars`` characters wide."""
    box_w = 2 * PAD + text_width(chars)
    pitch = box_w + COL_GAP
    limit = shelf_width(groups, box_w)
    most = max(1, int((limit - 2 * MARGIN - 2 * PANEL_PAD + COL_GAP) // pitch))
    panels: list[Panel] = []
    x, y, shelf_h = float(MARGIN), float(MARGIN), 0.0
    width = 0.0
    for group in groups:
        specs = group.cells
        cols = grid_columns(len(specs), most)
        panel_w = 2 * PANEL_PAD + cols * box_w + (cols - 1) * COL_GAP
        if x > MARGIN and x + panel_w > limit - MARGIN:
            x, y, shelf_h = float(MARGIN), y + shelf_h + PANEL_GAP, 0.0
        heading = wrap(group.heading, int((panel_w - 2 * PAD) // text_width(1)))
        head_h = PANEL_HEAD_TOP + (len(heading) - 1) * LINE + 10
        cells: list[Cell] = []
        row_y = y + head_h
        for start in range(0, len(specs), cols):
            row = specs[start:start + cols]
            row_h = 0.0
            for i, spec in enumerate(row):
                cx = x + PANEL_PAD + i * pitch
                box = Rect(cx, row_y, box_w, box_height(spec.box_lines))
                labels = None
                if spec.label_lines:
                    labels = Rect(cx, box.y + box.h, box_w, labels_height(spec.label_lines))
                cell = Cell(spec.key, box, labels)
                cells.append(cell)
                row_h = max(row_h, cell.outline.h)
            row_y += row_h + ROW_GAP
        panel_h = max(row_y - ROW_GAP, y + head_h + box_height(1)) + PANEL_PAD - y
        panels.append(Panel(group.key, Rect(x, y, panel_w, panel_h), tuple(heading),
                            tuple(cells)))
        width = max(width, x + panel_w + MARGIN)
        shelf_h = max(shelf_h, panel_h)
        x += panel_w + PANEL_GAP
    height = y + shelf_h + MARGIN if panels else 2 * MARGIN + box_height(1)
    return Layout(max(width, 2 * MARGIN + box_w), height, box_w, chars, label_chars(chars),
                  tuple(panels))


def wrap(text: str, chars: int) -> list[str]:
    """``text`` in lines of at most ``chars`` characters, broken after spaces where it
    can and inside a word where it must: every character is kept, none is cut off."""
    out: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if len(candidate) <= chars:
            line = candidate
            continue
        if line:
            out.append(line)
        while len(word) > chars:
            out.append(word[:chars])
            word = word[chars:]
        line = word
    if line or not out:
        out.append(line)
    return out
