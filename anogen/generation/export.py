"""Export generated sets as a stand-alone data set (MVTec / anomalib ``Folder`` style).

Layout::

    <out_root>/README.md
    <out_root>/dataset.json
    <out_root>/<category>/<defect>/images/<stem>_b<i>_s<j>.png
    <out_root>/<category>/<defect>/masks/<stem>_b<i>_s<j>.png   (box masks, 0/255: weak labels)

Every file is copied from a generation directory after checking it against the sha256 its
manifest recorded, and the copy is checked again. The tree is assembled in a temporary
directory beside ``out_root`` and renamed into place, so a reader never sees half an export.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from anogen import __version__
from anogen.errors import DataError, IntegrityError
from anogen.io import load_manifest, sha256_file, verify_file
from anogen.keys import canonical_json

_SPEC_KEYS = (
    "images_per_normal",
    "images_per_box",
    "steps",
    "guidance_scale",
    "eta",
    "paste_back",
    "seed",
    "min_overlap",
    "box",
    "texture",
)


def _readme(description: dict, sets: list[dict], total: int) -> str:
    lines = [
        "# AnoGen generated anomalies",
        "",
        "Produced by `anogen` (stage 2 of AnoGen: few-shot anomaly-driven generation). Each image",
        "is a normal training image in which a learned anomaly embedding was inpainted inside a",
        "random box with blended latent diffusion (DDIM, classifier-free guidance).",
        "",
        "**The masks are the generation boxes, not pixel-accurate defect masks: they are weak",
        "labels.** The anomaly lies somewhere inside its box; pixels in the box may be normal.",
        "",
        f"Images: {total} in {len(sets)} (category, defect) sets. Layout:",
        "`<category>/<defect>/images/*.png` and `<category>/<defect>/masks/*.png` (same names).",
        "Per-image provenance (source normal image, box, seed) is in `dataset.json`.",
        "",
    ]
    if description:
        lines += ["## Description", "", "```json", json.dumps(description, indent=2, sort_keys=True), "```", ""]
    lines += [
        "## Sets",
        "",
        "| category | defect | images | generation key | model | settings |",
        "|---|---|---|---|---|---|",
    ]
    for s in sets:
        settings = canonical_json({k: s["spec"][k] for k in _SPEC_KEYS if k in s["spec"]})
        lines.append(
            f"| {s['category']} | {s['defect']} | {s['n_images']} | {s['key']} | {s.get('model')} | `{settings}` |"
        )
    return "\n".join(lines) + "\n"


def _copy_verified(src: Path, dst: Path, sha: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if sha256_file(dst) != sha:
        raise IntegrityError(dst, f"copy of {src} does not match the sha256 recorded in its manifest")


def export_generated(generation_manifests: list[Path], out_root: Path, description: dict | None = None) -> Path:
    """Write the export to ``out_root`` (replacing an earlier export there); return ``out_root``."""
    out_root = Path(out_root)
    description = dict(description or {})
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.", dir=out_root.parent))
    try:
        seen: dict[tuple[str, str], Path] = {}
        sets: list[dict[str, Any]] = []
        total = 0
        for manifest_path in generation_manifests:
            manifest_path = Path(manifest_path)
            if manifest_path.is_dir():
                manifest_path = manifest_path / "manifest.json"
            manifest = load_manifest(manifest_path)
            if manifest.get("stage") != "generation":
                raise DataError(manifest_path, f"is a '{manifest.get('stage')}' manifest, not a generation one")
            spec = manifest["spec"]
            category, defect = spec["category"], spec["defect"]
            if (category, defect) in seen:
                raise DataError(
                    manifest_path, f"a second generated set for {category}/{defect} (first: {seen[(category, defect)]})"
                )
            seen[(category, defect)] = manifest_path
            base = Path(category) / defect
            items = []
            for item in manifest["extra"]["items"]:
                entry = {k: v for k, v in item.items() if k not in ("image", "mask")}
                for field in ("image", "mask"):
                    src = verify_file(manifest_path, item[field], manifest)
                    rel = (base / ("images" if field == "image" else "masks") / Path(item[field]).name).as_posix()
                    sha = manifest["files"][item[field]]["sha256"]
                    _copy_verified(src, tmp / rel, sha)
                    entry[field] = rel
                    entry[f"{field}_sha256"] = sha
                items.append(entry)
            total += len(items)
            extra = manifest["extra"]
            sets.append(
                {
                    "category": category,
                    "defect": defect,
                    "key": manifest["key"],
                    "inputs": manifest["inputs"],
                    "spec": spec,
                    "n_images": len(items),
                    "model": extra.get("model"),
                    "family": extra.get("family"),
                    "resolution": extra.get("resolution"),
                    "source_manifest": str(manifest_path),
                    "items": items,
                }
            )
        dataset = {
            "format": "anogen-generated/1",
            "layout": "<category>/<defect>/{images,masks}/<name>.png (images <name>.jpg where generation.jpeg_quality was set)",
            "masks": "bounding boxes of the generation (weak labels), 0 = outside, 255 = inside",
            "description": description,
            "n_images": total,
            "sets": sets,
        }
        dataset["anogen_version"] = __version__
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(description, sets, total), encoding="utf-8")

        old = None
        if out_root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.old.", dir=out_root.parent))
            old.rmdir()
            out_root.rename(old)
        tmp.rename(out_root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_root
