"""Generation quality of one generated set (rule ``generation_quality``) or of any folder of images.

:func:`generation_quality` reads a keyed generated set (images and box masks), the IC-LPIPS
cluster centres (``quality.ic_lpips_centres``: its support set, or the first third of the defect
type's test anomalies as AnomalyDiffusion's ``cal_ic_lpips.py``) and the real anomalies of the
defect type that are not support images (KID's reference), and writes ``quality.json`` (one CSV
row) and the manifest. Every image is read as stored, made square by the config's ``resize`` and
brought to ``quality.image_size`` with one kernel (``metrics.RESIZE_KERNEL``; masks: nearest).
:func:`folder_quality` computes the same row for folders made by anything (``anogen quality``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anogen import provenance
from anogen.data.geometry import to_square
from anogen.data.images import load_image, load_mask
from anogen.data.index import relative_to_root
from anogen.data.support import read_support_set
from anogen.errors import ConfigError, DataError
from anogen.io import atomic_write_text, load_manifest, read_image, verify_file, write_manifest
from anogen.quality.metrics import Item, quality_metrics, resized
from anogen.quality.networks import INCEPTION_NAME, load_inception, load_lpips, weights_info
from anogen.quality.table import library_versions, quality_html, read_rows, write_csv

QUALITY_NAME = "quality.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_FOLDERS = ("mask", "masks", "ground_truth")


def settings_of(quality: dict, batch_size: int) -> dict[str, Any]:
    """The metric settings of a ``quality`` config section (or a quality spec) plus the batch size."""
    names = ("image_size", "crop_margin", "is_splits", "kid_subsets", "kid_subset_size", "ic_lpips_cluster_cap", "seed")
    return {**{n: quality[n] for n in names}, "batch_size": batch_size}


def compute_row(
    generated: Sequence[Item],
    real: Sequence[Item],
    centres: Sequence[Item],
    quality: dict,
    weights: dict[str, str],
    device: str,
    batch_size: int,
) -> dict[str, Any]:
    """One CSV row (without category, defect, key, source, note): metrics, settings, weights, versions.

    Its ``notes`` (why a metric is empty) go into the row's ``note`` with the provenance notes.
    """
    if not generated:
        raise DataError("generated", "no generated images to score")
    inception = weights_info(weights["inception"], "quality.inception_weights")
    lpips_file = weights_info(weights["lpips"], "quality.lpips_weights")
    nets = {
        "inception": load_inception(inception.path, device),
        "lpips": load_lpips(lpips_file.path, quality["lpips_net"], device),
    }
    settings = settings_of(quality, batch_size)
    row = quality_metrics(generated, real, centres, settings, nets, device)
    row.update(
        image_size=settings["image_size"],
        ic_lpips_centres=quality["ic_lpips_centres"],
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


def square_item(image: np.ndarray, mask: np.ndarray | None, size: int, resize: str) -> Item:
    """An image (and its mask) as stored, made square by ``resize`` and brought to ``size`` (masks: nearest)."""
    from PIL import Image

    image = resized(to_square(image, resize), size)
    if mask is None:
        return image, None
    mask = to_square(mask, resize)
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return image, mask


def read_item(image: Path, mask: Path | None, size: int, resize: str) -> Item:
    return square_item(load_image(image), None if mask is None else load_mask(mask), size, resize)


def _natural(name: str) -> list:
    """Sort key reading digit runs as numbers (9.png < 10.png), as the peers' numbered file names."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def first_third(paths: Sequence[Path]) -> list[Path]:
    """AnomalyDiffusion's cluster centres: the first len // 3 images of a defect type, in name order."""
    ordered = sorted(paths, key=lambda p: _natural(p.name))
    return ordered[: len(ordered) // 3]


# ----------------------------------------------------------------------------- the workflow job


def _generated_items(manifest_path: Path, size: int) -> list[Item]:
    manifest = load_manifest(manifest_path)
    items = []
    for item in manifest["extra"]["items"]:
        image = read_image(verify_file(manifest_path, item["image"], manifest))
        mask = read_image(verify_file(manifest_path, item["mask"], manifest), "L") > 0
        items.append(square_item(image, mask.astype(np.uint8), size, "squash"))  # square already
    return items


def reference_sets(test_items, root: Path, spec: dict) -> tuple[list[Item], list[Item]]:
    """KID's reference (the defect's test anomalies that are not support images) and, with
    ``ic_lpips_centres: test_first_third``, the cluster centres (else none: the support set is)."""
    items = {item.path: item.mask for item in test_items if item.defect == spec["defect"]}
    left_out = set(spec["excluded"])
    real = [path for path in items if relative_to_root(root, path) not in left_out]
    centres = first_third(list(items)) if spec["ic_lpips_centres"] == "test_first_third" else []
    size, resize = spec["image_size"], spec["resize"]
    loaded = {path: read_item(path, items[path], size, resize) for path in dict.fromkeys(real + centres)}
    return [loaded[p] for p in real], [loaded[p] for p in centres]


def generation_quality(
    *, spec: dict, generated_manifest: Path, support_manifest: Path, test_items: Sequence, data_root: Path,
    weights: dict[str, str], out_dir: Path, key: str, inputs: dict, device: str, batch_size: int,
) -> Path:  # fmt: skip
    """Score one keyed generated set; write ``quality.json`` and the manifest (last)."""
    for name, want in (("inception", spec["inception_sha256"]), ("lpips", spec["lpips_sha256"])):
        got = weights_info(weights[name], f"quality.{name}_weights").sha256
        if got != want:
            raise DataError(weights[name], f"sha256 {got} is not the planned {want}; rerun snakemake to replan")
    real, centres = reference_sets(test_items, data_root, spec)
    if spec["ic_lpips_centres"] == "support":
        support = read_support_set(support_manifest)  # as stored: resized here like every other image
        centres = [square_item(im, mask, spec["image_size"], spec["resize"]) for im, mask in support]
    row = compute_row(
        _generated_items(generated_manifest, spec["image_size"]), real, centres, spec, weights, device, batch_size
    )
    row.update(category=spec["category"], defect=spec["defect"], generation_key=inputs["generation"])
    row["source"] = generated_manifest.parent.as_posix()
    row["note"] = _note([*(provenance.current() or []), *row.pop("notes")])
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / QUALITY_NAME, json.dumps(row, indent=1, sort_keys=True) + "\n")
    return write_manifest(out_dir, stage="quality", key=key, spec=spec, inputs=inputs, files=[QUALITY_NAME])


def write_quality_table(quality_files: Sequence[Path], csv_path: Path, html_path: Path) -> None:
    """``generation_quality.csv`` and its report page from every ``quality.json``."""
    rows = [json.loads(verify_file(Path(p).parent / "manifest.json", QUALITY_NAME).read_text()) for p in quality_files]
    rows.sort(key=lambda r: (r["category"], r["defect"]))
    write_csv(rows, csv_path)
    atomic_write_text(html_path, quality_html(read_rows(csv_path)))


# ----------------------------------------------------------------------------- any folder


def _is_mask(rel: Path) -> bool:
    """A mask by its place or name: under a mask folder (mask/, masks/, ground_truth/, image-mask/) or *_mask.*."""
    folders = [part.lower() for part in rel.parts[:-1]]
    return rel.stem.lower().endswith("_mask") or any(f in MASK_FOLDERS or f.endswith("-mask") for f in folders)


def image_folder(folder: Path) -> Path:
    """``folder/image`` when there is one (the peers' ``<defect>/{image,mask,...}`` layout), else ``folder``."""
    return folder / "image" if (folder / "image").is_dir() else folder


def folder_images(folder: Path, masks: Path | None = None) -> list[Path]:
    """Every image under ``folder`` (recursively) that is not a mask, in name order."""
    if not folder.is_dir():
        raise DataError(folder, "not a folder of images")
    inside = [masks.resolve()] if masks is not None else []
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _is_mask(p.relative_to(folder))
        and not any(p.resolve().is_relative_to(m) for m in inside)
    )  # fmt: skip
    if not files:
        raise DataError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in it or below it, masks left out")
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


def folder_items(images: Sequence[Path], folder: Path, masks: Path | None, size: int, resize: str) -> list[Item]:
    """``images`` (under ``folder``) with their masks from ``masks`` if given, each through :func:`read_item`."""
    return [read_item(image, _mask_for(image, folder, masks), size, resize) for image in images]


def folder_quality(
    *, generated: Path, real: Path | None, support: Path | None, masks: dict[str, Path | None], quality: dict,
    resize: str, weights: dict[str, str], device: str,
) -> dict[str, Any]:  # fmt: skip
    """The CSV row of images not made by this pipeline (``anogen quality``).

    With ``ic_lpips_centres: test_first_third`` the centres are the first third of ``real`` (pass
    the defect type's whole test folder), which then stays KID's reference too.
    """
    if quality["ic_lpips_centres"] == "test_first_third" and support is not None:
        raise ConfigError(
            "quality.ic_lpips_centres",
            "test_first_third takes the centres from the first third of --real; drop --support or set it to support",
        )
    sets: dict[str, list[Item]] = {}
    files: dict[str, list[Path]] = {}
    for name, folder in (("generated", generated), ("real", real), ("support", support)):
        if folder is None:
            sets[name], files[name] = [], []
            continue
        folder = image_folder(folder)
        files[name] = folder_images(folder, masks.get(name))
        sets[name] = folder_items(files[name], folder, masks.get(name), quality["image_size"], resize)
    centres = sets["support"]
    if quality["ic_lpips_centres"] == "test_first_third":
        chosen = set(first_third(files["real"]))
        centres = [item for path, item in zip(files["real"], sets["real"], strict=True) if path in chosen]
    with provenance.collecting() as notes:
        row = compute_row(sets["generated"], sets["real"], centres, quality, weights, device, quality["batch_size"])
    row.update(
        category="", defect="", generation_key="", source=str(generated), note=_note([*notes, *row.pop("notes")])
    )
    return row
