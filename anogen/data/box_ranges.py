"""The box ranges learned from the support masks, compared with hand-set ones (``anogen box-ranges``).

For every planned (category, defect) the command (``anogen.commands.box_ranges``) reads the
masks of the support set the plan chooses (``support.files``, the authors' published set, or the seeded ``support.shots`` choice: the
same images the support job copies; test masks outside it are never opened), puts them through
the ``resize`` geometry and learns a range with
:func:`anogen.generation.boxes.learned_box_range` (``generation.learned_box``; for rule
``components`` the width and height shown are the smallest and largest side its boxes can
get along their own axes, rotated boxes included). Where a
reference gives a hand-set range for the pair (by default the config's own
``generation.box_ranges``; on MVTec AD the authors' 73 ranges of ``config/mvtec.yaml``) the
two are compared per axis:

- ``iou``: length of the intersection over length of the union of the two intervals, each
  widened by ``POINT_WIDTH / 2`` on both sides so that a point range such as ``[0.4, 0.4]``
  has a length;
- ``verdict``: ``agree`` (iou >= 0.5 on both axes), ``smaller`` / ``larger`` (on some axis the
  learned interval lies entirely below / above the hand-set one), otherwise ``partial``.

Nothing here is part of a key: it is a report.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import yaml

from anogen.data.geometry import to_square
from anogen.data.images import load_mask
from anogen.data.layouts import layout_spec, scan_category
from anogen.data.support import select_listed
from anogen.errors import DataError

POINT_WIDTH = 0.01
AGREE_IOU = 0.5
COLUMNS = (
    "category",
    "defect",
    "learned_width",
    "learned_height",
    "handset_width",
    "handset_height",
    "rotate",
    "iou_width",
    "iou_height",
    "verdict",
    "components",
)


@dataclass
class Row:
    category: str
    defect: str
    learned: dict
    handset: dict | None

    @property
    def iou(self) -> tuple[float, float] | None:
        if self.handset is None:
            return None
        return tuple(interval_iou(self.learned[a], self.handset[a]) for a in ("width", "height"))

    @property
    def verdict(self) -> str:
        if self.handset is None:
            return "no hand-set range"
        return compare_ranges(self.learned, self.handset)

    def cells(self) -> list[str]:
        def span(r):
            return f"{r[0]:.3f}-{r[1]:.3f}"

        iou = self.iou
        return [
            self.category,
            self.defect,
            span(self.learned["width"]),
            span(self.learned["height"]),
            span(self.handset["width"]) if self.handset else "",
            span(self.handset["height"]) if self.handset else "",
            str(self.handset["rotate"]).lower() if self.handset else "",
            f"{iou[0]:.2f}" if iou else "",
            f"{iou[1]:.2f}" if iou else "",
            self.verdict,
            str(len(self.learned["components"])),
        ]


def interval_iou(a, b) -> float:
    """Intersection over union of two [lo, hi] intervals, each widened by POINT_WIDTH / 2 per side."""
    (a0, a1), (b0, b1) = sorted(map(float, a)), sorted(map(float, b))
    pad = POINT_WIDTH / 2
    a0, a1, b0, b1 = a0 - pad, a1 + pad, b0 - pad, b1 + pad
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    return inter / (max(a1, b1) - min(a0, b0))


def compare_ranges(learned: dict, handset: dict) -> str:
    """``agree`` / ``smaller`` / ``larger`` / ``partial`` (see the module docstring)."""
    axes = ("width", "height")
    if all(interval_iou(learned[a], handset[a]) >= AGREE_IOU for a in axes):
        return "agree"
    if any(learned[a][1] < handset[a][0] for a in axes):
        return "smaller"
    if any(learned[a][0] > handset[a][1] for a in axes):
        return "larger"
    return "partial"


def handset_ranges(config: dict) -> dict[tuple[str, str], dict]:
    """The hand-set ranges of a validated config's ``generation.box_ranges`` (not 'learned' ones)."""
    out = {}
    for category, defects in config["generation"]["box_ranges"].items():
        if defects == "learned":
            continue
        for defect, box in defects.items():
            if box != "learned":
                out[(category, defect)] = {
                    "width": box["width"],
                    "height": box["height"],
                    "rotate": bool(box.get("rotate")),
                }
    return out


def support_masks(plan, category: str, defect: str) -> list:
    """The squared support masks of (category, defect), chosen as the support job chooses them."""
    files = plan.support_files(category, defect)
    root = plan.config["data_root"]
    if files is None:
        raise DataError(f"{root}/{category}", f"defect {defect} has fewer than support.shots anomalous images")
    index = scan_category(root, category, layout_spec(plan.config), defects=[defect])
    items = select_listed(index, defect, list(files), plan.support_origin(category, defect))
    return [to_square(load_mask(item.mask), plan.config["resize"]) for item in items]


def reference_from_file(path: str | Path) -> dict[tuple[str, str], dict]:
    """Hand-set ranges from a config file's ``generation.box_ranges`` or a bare ``{category: {defect: box}}``."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    ranges = raw.get("generation", {}).get("box_ranges", raw) if "generation" in raw else raw
    return handset_ranges({"generation": {"box_ranges": ranges}})


def render(rows: list[Row]) -> str:
    """A markdown table and a summary (agreement counts, mean IoU, the disagreements)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    compared = [row for row in rows if row.handset is not None]
    if compared:
        counts = {v: sum(row.verdict == v for row in compared) for v in ("agree", "partial", "smaller", "larger")}
        mean_w = sum(row.iou[0] for row in compared) / len(compared)
        mean_h = sum(row.iou[1] for row in compared) / len(compared)
        lines += [
            "",
            f"{len(compared)} defect types compared: "
            + ", ".join(f"{v} {n}" for v, n in counts.items())
            + f"; mean IoU width {mean_w:.2f}, height {mean_h:.2f}",
        ]
        off = [f"{row.category}/{row.defect} ({row.verdict})" for row in compared if row.verdict != "agree"]
        if off:
            lines.append("disagree: " + ", ".join(off))
    return "\n".join(lines)


def to_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(row.cells() for row in rows)
    return out.getvalue()
