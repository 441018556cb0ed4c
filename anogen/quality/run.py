"""Generation quality of one generated set (rule ``generation_quality``) or of any folder of images.

:func:`generation_quality` reads a keyed generated set (images and box masks), its support set
(the IC-LPIPS cluster centres) and the real anomalies of the defect type that are not support
images (KID's reference), and writes ``quality.json`` (one CSV row) and the manifest.
:func:`folder_quality` computes the same row for folders made by anything (``anogen quality``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anogen import provenance
from anogen.errors import DataError
from anogen.quality.metrics import Item, quality_metrics
from anogen.quality.networks import INCEPTION_NAME, load_inception, load_lpips, weights_info
from anogen.quality.table import library_versions

QUALITY_NAME = "quality.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def settings_of(quality: dict, batch_size: int) -> dict[str, Any]:
    """The metric settings of a ``quality`` config section (or a quality spec) plus the batch size."""
    names = ("image_size", "crop_margin", "is_splits", "kid_subsets", "kid_subset_size", "seed")
    return {**{n: quality[n] for n in names}, "batch_size": batch_size}


def compute_row(
    generated: Sequence[Item],
    real: Sequence[Item],
    support: Sequence[Item],
    quality: dict,
    weights: dict[str, str],
    device: str,
    batch_size: int,
) -> dict[str, Any]:
    """One CSV row (without category, defect, key, source): metrics, settings, weights, versions, notes."""
    if not generated:
        raise DataError("generated", "no generated images to score")
    inception = weights_info(weights["inception"], "quality.inception_weights")
    lpips_file = weights_info(weights["lpips"], "quality.lpips_weights")
    nets = {
        "inception": load_inception(inception.path, device),
        "lpips": load_lpips(lpips_file.path, quality["lpips_net"], device),
    }
    settings = settings_of(quality, batch_size)
    row = quality_metrics(generated, real, support, settings, nets, device)
    row.update(
        image_size=settings["image_size"],
        crop_margin=settings["crop_margin"],
        seed=settings["seed"],
        feature_extractor=f"torch-fidelity {INCEPTION_NAME}",
        inception_sha256=inception.sha256,
        lpips_net=quality["lpips_net"],
        lpips_sha256=lpips_file.sha256,
        **library_versions(),
    )
    return row


def _note(row_notes: Sequence[str]) -> str:
    return "; ".join(sorted(set(row_notes)))


# ----------------------------------------------------------------------------- the workflow job


def _generated_items(manifest_path: Path) -> list[Item]:
    from anogen.io import load_manifest, read_image, verify_file

    manifest = load_manifest(manifest_path)
    items = []
    for item in manifest["extra"]["items"]:
        image = read_image(verify_file(manifest_path, item["image"], manifest))
        mask = read_image(verify_file(manifest_path, item["mask"], manifest), "L") > 0
        items.append((image, mask.astype(np.uint8)))
    return items


def real_anomalies(test_items, root: Path, defect: str, excluded: Sequence[str], size: int, resize: str) -> list[Item]:
    """The defect's test images (and masks) that are not support images, in the ``resize`` geometry."""
    from anogen.data.mvtec import load_image, load_mask, relative_to_root

    left_out = set(excluded)
    out = []
    for item in test_items:
        if item.defect != defect or relative_to_root(root, item.path) in left_out:
            continue
        mask = None if item.mask is None else load_mask(item.mask, size, resize)
        out.append((load_image(item.path, size, resize), mask))
    return out


def generation_quality(
    *, spec: dict, generated_manifest: Path, support_manifest: Path, real: Sequence[Item], weights: dict[str, str],
    out_dir: Path, key: str, inputs: dict, device: str, batch_size: int,
) -> Path:  # fmt: skip
    """Score one keyed generated set; write ``quality.json`` and the manifest (last)."""
    from anogen.data.support import read_support_set
    from anogen.io import atomic_write_text, write_manifest

    for name, want in (("inception", spec["inception_sha256"]), ("lpips", spec["lpips_sha256"])):
        got = weights_info(weights[name], f"quality.{name}_weights").sha256
        if got != want:
            raise DataError(weights[name], f"sha256 {got} is not the planned {want}; rerun snakemake to replan")
    support = read_support_set(support_manifest, spec["image_size"], spec["resize"])
    row = compute_row(_generated_items(generated_manifest), real, support, spec, weights, device, batch_size)
    row.update(category=spec["category"], defect=spec["defect"], generation_key=inputs["generation"])
    row["source"] = generated_manifest.parent.as_posix()
    row["note"] = _note(provenance.current() or [])
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / QUALITY_NAME, json.dumps(row, indent=1, sort_keys=True) + "\n")
    return write_manifest(out_dir, stage="quality", key=key, spec=spec, inputs=inputs, files=[QUALITY_NAME])


def write_quality_table(quality_files: Sequence[Path], csv_path: Path, html_path: Path) -> None:
    """``generation_quality.csv`` and its report page from every ``quality.json``."""
    from anogen.io import atomic_write_text, verify_file
    from anogen.quality.table import quality_html, read_rows, write_csv

    rows = [json.loads(verify_file(Path(p).parent / "manifest.json", QUALITY_NAME).read_text()) for p in quality_files]
    rows.sort(key=lambda r: (r["category"], r["defect"]))
    write_csv(rows, csv_path)
    atomic_write_text(html_path, quality_html(read_rows(csv_path)))


# ----------------------------------------------------------------------------- any folder


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(folder, "not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in it or below it")
    return files


def _mask_for(image: Path, folder: Path, masks: Path | None) -> Path | None:
    if masks is None:
        return None
    rel = image.relative_to(folder)
    for name in (rel.name, f"{rel.stem}_mask.png", f"{rel.stem}.png"):
        candidate = masks / rel.parent / name
        if candidate.is_file():
            return candidate
    raise DataError(masks, f"no mask for {image} (looked for {rel.stem}, {rel.stem}_mask.png)")


def folder_items(folder: Path | None, masks: Path | None, size: int) -> list[Item]:
    """Every image under ``folder`` (squashed to ``size``), with its mask from ``masks`` if given."""
    from anogen.data.mvtec import load_image, load_mask

    if folder is None:
        return []
    out = []
    for image in _images(folder):
        mask = _mask_for(image, folder, masks)
        out.append((load_image(image, size, "squash"), None if mask is None else load_mask(mask, size, "squash")))
    return out


def folder_quality(
    *, generated: Path, real: Path | None, support: Path | None, masks: dict[str, Path | None], quality: dict,
    weights: dict[str, str], device: str,
) -> dict[str, Any]:  # fmt: skip
    """The CSV row of images not made by this pipeline (``anogen quality``)."""
    size = quality["image_size"]
    sets = {name: folder_items(folder, masks.get(name), size) for name, folder in
            (("generated", generated), ("real", real), ("support", support))}  # fmt: skip
    with provenance.collecting() as notes:
        row = compute_row(
            sets["generated"], sets["real"], sets["support"], quality, weights, device, quality["batch_size"]
        )
    row.update(category="", defect="", generation_key="", source=str(generated), note=_note(notes))
    return row
