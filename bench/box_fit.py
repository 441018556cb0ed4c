"""How well learned boxes fit real defects: the authors' 219 MVTec AD support masks, old rule against new.

Input: a clone of github.com/gaobb/AnoGen (``--authors-repo``); its
``DIFFUSION/images/train_images/<category>/<defect>_mask/*_mask.png`` are the masks of the 3
support images of each of the 73 defect types (at their native, square resolution). Nothing
else of the clone is read and nothing of it is written.

Two rules of ``generation.learned_box`` (``anogen.generation.boxes.learned_box_range``):
``old`` = ``rule: range`` with the schema's margin, min_size, min_component and ``rotate:
false`` (the rule and defaults before rule ``components``); ``new`` = the schema's defaults
(``rule: components``). Box shapes are drawn as the generation job draws them
(``anogen.generation.boxes.box_shapes(...).draw``, fractions of the image side), keeping only
shapes whose rotated hull fits in the image (the job rejects the others); placement on a
foreground is not modelled.

Leave-one-out, per type and per held-out mask (3 folds): learn from the other 2 masks, draw
``--draws`` shapes, and compare them with the held-out mask's largest component (most pixels):

- ``inside``: that component's axis-aligned bounding box has its width and height inside the
  learned intervals (the ``range`` rule only: the original 62% figure);
- ``size``: some drawn box has its long side and its short side each within a factor
  ``--size-factor`` (1.5) of the long and the short side of the component's
  minimum-area rotated rectangle (angle ignored: the box is placed on another image);
- ``iou``: some drawn box, centred on that rectangle, has rotated IoU >= ``--iou`` (0.5) with it
  (angle counts);
- ``size_piece`` / ``iou_piece``: the same against the largest piece of that component when it
  is cut as the ``components`` rule cuts sparse rectangles (``min_fill``), i.e. one branch of a
  branched crack rather than the rectangle around all of it;
- ``hits``: the share of drawn boxes that fit ``size_piece`` (how many boxes fit, not whether one does);
- ``ratio``: drawn box area / the component's pixel area (median over the folds' draws).

Coverage = the fraction of the 219 held-out masks with a fit. Per type, learned from all 3
masks: the median and the largest area of the drawn boxes as a fraction of the image.

    OMP_NUM_THREADS=1 .venv/bin/python bench/box_fit.py --authors-repo /path/to/AnoGen --csv box_fit.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

from anogen.authors import SUPPORT_DIR
from anogen.generation.boxes import _components, box_shapes, learned_box_range, mask_component_rects, min_area_rect

RULES = ("old", "new")
FITS = ("inside", "size", "iou", "size_piece", "iou_piece", "hits")


def rules(overrides: list[str] = ()) -> dict[str, dict]:
    """``generation.learned_box`` of each rule: the schema's defaults, ``overrides`` (KEY=VALUE) on the new one."""
    import yaml

    from anogen.config import validate_config

    new = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in overrides)}
    learned = validate_config({"data_root": ".", "generation": {"learned_box": new}})["generation"]["learned_box"]
    old = {name: learned[name] for name in ("margin", "min_size", "min_component")}
    return {"old": {"learned": old, "rotate": False}, "new": {"learned": dict(learned), "rotate": learned["rotate"]}}


def read_masks(repo: Path) -> dict[tuple[str, str], list[np.ndarray]]:
    """The support masks of every (category, defect) of the authors' tree, as 0/1 arrays."""
    from PIL import Image

    out = {}
    for folder in sorted((repo / SUPPORT_DIR).glob("*/*_mask")):
        masks = [np.asarray(Image.open(p).convert("L")) > 0 for p in sorted(folder.glob("*_mask.png"))]
        if masks:
            out[(folder.parent.name, folder.name[: -len("_mask")])] = masks
    if not out:
        sys.exit(f"no support masks under {repo / SUPPORT_DIR}/<category>/<defect>_mask/")
    return out


def draw_shapes(box: dict, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` (w, h, angle) box shapes, fractions of the image side, that fit in the image."""
    from anogen.generation.boxes import _half_extent

    shapes, out = box_shapes(box), []
    while len(out) < n:
        w, h, angle = shapes.draw(rng, 1, 1)
        rng.uniform(0.0, 1.0, 2)  # the placement draws of the job, to follow its stream
        if max(_half_extent(w, h, angle)) <= 0.5 + 1e-9:
            out.append((w, h, angle))
    return np.array(out)


def rotated_iou(a, b) -> float:
    """IoU of two rectangles (w, h, angle) centred on one point."""
    import cv2

    scale = 1000.0  # OpenCV's intersection works in float32 pixels
    ra = ((0.0, 0.0), (a[0] * scale, a[1] * scale), float(a[2]))
    rb = ((0.0, 0.0), (b[0] * scale, b[1] * scale), float(b[2]))
    _, points = cv2.rotatedRectangleIntersection(ra, rb)
    inter = 0.0 if points is None else cv2.contourArea(cv2.convexHull(points)) / scale**2
    return inter / (a[0] * a[1] + b[0] * b[1] - inter)


def largest_component(mask: np.ndarray, min_fill: float) -> dict:
    """Pixels, bounding box, rotated rectangle and largest cut piece of a mask's largest component."""
    labels, stats, kept = _components(mask, 0.0)
    label = kept[np.argmax(stats[kept, 4])]
    part = (labels == label).astype(np.uint8)
    ys, xs = np.nonzero(part)
    pieces = mask_component_rects(part, 0.0, min_fill)
    piece = max(pieces, key=lambda r: r[3])
    return {
        "pixels": len(xs) / mask.size,
        "aabb": (stats[label, 2] / mask.shape[1], stats[label, 3] / mask.shape[0]),
        "rect": min_area_rect(xs, ys, *mask.shape),
        "piece": tuple(piece[:3]),
    }


def size_hits(shapes: np.ndarray, rect, factor: float) -> np.ndarray:
    """Which drawn boxes have both sides within ``factor`` of the rectangle's (long with long)."""
    long, short = np.maximum(shapes[:, 0], shapes[:, 1]), np.minimum(shapes[:, 0], shapes[:, 1])
    return (np.abs(np.log(long / rect[0])) <= math.log(factor)) & (np.abs(np.log(short / rect[1])) <= math.log(factor))


def size_fit(shapes: np.ndarray, rect, factor: float) -> bool:
    return bool(size_hits(shapes, rect, factor).any())


def iou_fit(shapes: np.ndarray, rect, threshold: float) -> bool:
    return any(rotated_iou(s, rect) >= threshold for s in shapes)


def fold(box: dict, target: dict, shapes: np.ndarray, args) -> dict:
    """The fit of one held-out component by the boxes of one rule."""
    inside = None
    if box.get("rule") != "components":
        (w_lo, w_hi), (h_lo, h_hi) = box["width"], box["height"]
        inside = bool(w_lo <= target["aabb"][0] <= w_hi and h_lo <= target["aabb"][1] <= h_hi)
    return {
        "inside": inside,
        "size": size_fit(shapes, target["rect"], args.size_factor),
        "iou": iou_fit(shapes, target["rect"], args.iou),
        "size_piece": size_fit(shapes, target["piece"], args.size_factor),
        "iou_piece": iou_fit(shapes, target["piece"], args.iou),
        "hits": float(size_hits(shapes, target["piece"], args.size_factor).mean()),
        "ratios": shapes[:, 0] * shapes[:, 1] / target["pixels"],
    }


def measure_type(masks: list[np.ndarray], specs: dict, seed: int, args) -> dict:
    """Per rule: the leave-one-out fits and ratios, and the drawn area from all masks."""
    min_fill = float(specs["new"]["learned"]["min_fill"])
    targets = [largest_component(m, min_fill) for m in masks]
    out = {}
    for name, spec in specs.items():
        rng = np.random.default_rng(seed)
        folds = []
        for i in range(len(masks)):
            box = learned_box_range(masks[:i] + masks[i + 1 :], spec["learned"], spec["rotate"])
            folds.append(fold(box, targets[i], draw_shapes(box, rng, args.draws), args))
        full = draw_shapes(learned_box_range(masks, spec["learned"], spec["rotate"]), rng, args.draws)
        areas = full[:, 0] * full[:, 1]
        out[name] = {
            **{fit: [f[fit] for f in folds] for fit in FITS},
            "ratio": float(np.median(np.concatenate([f["ratios"] for f in folds]))),
            "area_median": float(np.median(areas)),
            "area_max": float(areas.max()),
        }
    return out


def summary(results: dict) -> list[str]:
    """Markdown: coverage per fit and rule, area ratios, the extremes."""
    n_masks = sum(len(r["old"]["size"]) for r in results.values())
    lines = [
        f"{len(results)} defect types, {n_masks} held-out masks",
        "",
        "| rule | " + " | ".join(FITS) + " | median box/defect area | box/defect, per type min-max | "
        "median box/image |",
        "|---|" + "---|" * (len(FITS) + 3),
    ]
    for rule in RULES:
        cells = []
        for fit in FITS:
            values = [v for r in results.values() for v in r[rule][fit] if v is not None]
            cells.append(f"{np.mean(values):.0%}" if values else "n/a")
        ratios = {k: r[rule]["ratio"] for k, r in results.items()}
        lo, hi = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
        area = np.median([r[rule]["area_median"] for r in results.values()])
        lines.append(
            f"| {rule} | " + " | ".join(cells) + f" | {np.median(list(ratios.values())):.1f} | "
            f"{ratios[lo]:.1f} ({'/'.join(lo)}) - {ratios[hi]:.1f} ({'/'.join(hi)}) | {area:.3f} |"
        )
    return lines


def write_csv(results: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        head = ["category", "defect"]
        for rule in RULES:
            head += [f"{rule}_{fit}" for fit in FITS] + [f"{rule}_{k}" for k in ("ratio", "area_median", "area_max")]
        writer.writerow(head)
        for (category, defect), r in results.items():
            row = [category, defect]
            for rule in RULES:
                row += ["" if r[rule][fit][0] is None else round(float(np.mean(r[rule][fit])), 3) for fit in FITS]
                row += [f"{r[rule][k]:.4f}" for k in ("ratio", "area_median", "area_max")]
            writer.writerow(row)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors-repo", type=Path, required=True, help="a clone of github.com/gaobb/AnoGen")
    ap.add_argument("--draws", type=int, default=100, help="box shapes drawn per fold (default 100)")
    ap.add_argument("--size-factor", type=float, default=1.5, help="'size' fit: sides within this factor")
    ap.add_argument("--iou", type=float, default=0.5, help="'iou' fit: rotated IoU at least this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="learned_box values of the new rule")
    ap.add_argument("--csv", type=Path, help="per-type results (fits: mean over the 3 folds; ratios, areas)")
    ap.add_argument("--show", nargs="*", default=["tile/crack", "grid/thread", "wood/scratch"], help="types to print")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    specs = rules(args.set)
    results = {key: measure_type(masks, specs, args.seed, args) for key, masks in read_masks(args.authors_repo).items()}
    print("\n".join(summary(results)))
    for name in args.show:
        key = tuple(name.split("/", 1))
        if key in results:
            r = results[key]
            print(
                f"{name}: box/image median {r['old']['area_median']:.3f} -> {r['new']['area_median']:.3f}, "
                f"largest {r['old']['area_max']:.3f} -> {r['new']['area_max']:.3f}; box/defect "
                f"{r['old']['ratio']:.1f} -> {r['new']['ratio']:.1f}"
            )
    if args.csv:
        write_csv(results, args.csv)
    return results


if __name__ == "__main__":
    main()
