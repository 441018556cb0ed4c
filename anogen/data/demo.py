"""A small offline data set in the MVTec AD layout, generated from a seed.

No MVTec AD is available offline, so the default run uses this generated set. Normal
images come from real photographs bundled with scikit-image (``skimage/data/*.png``, read
directly from the installed package: no network, no pooch); defects are drawn on top with
an exact binary mask (mask = 1 exactly on the pixels the defect changed; stored as 0/255
PNGs like MVTec's ground truth). The three photographs used (``brick.png``, ``grass.png``,
``gravel.png``) are CC0-licensed according to scikit-image's documentation.

Categories (names chosen not to be mistaken for MVTec's own):

``grass_texture``  colour texture: crops of scikit-image's ``grass.png`` photograph,
                   coloured green; flips, crop scale and brightness vary.
                   defects: ``contamination`` (saturated coloured blob keeping the grass
                   shading), ``hole`` (dark ellipse with a light-brown rim).
``brick_gray``     grayscale texture (saved as mode "L", like MVTec grid/screw/zipper):
                   crops of ``brick.png``. defects: ``crack`` (dark jagged polyline),
                   ``spot`` (bright irregular blob, like a glue drop).
``nut_object``     colour object on a background: a shaded bronze hexagon nut with a hole,
                   on a low-contrast photo background (``gravel.png``) with a soft shadow;
                   position, scale, rotation and brightness vary, so a GrabCut foreground
                   step has work. Defects always lie on the nut: ``chip`` (a piece of the
                   rim missing, background shows through), ``contamination`` (dark
                   blue-green blob), ``scratch`` (thin bright line).

``demo_layout(spec)`` gives the categories and defects without touching disk (the
Snakefile calls it while building the DAG). ``generate_demo_dataset(spec)`` builds the set
in a temporary folder beside ``spec["root"]``, writes ``demo_spec.json`` into it last and
renames the folder into place; an existing folder is only replaced if an earlier
``generate_demo_dataset`` made it. Output is byte-identical for the same spec (and library
versions). Every image is derived from its own random generator, seeded through sha256
from (seed, category, subset, index), so each image can be re-rendered alone
(``anogen.data.demo_images.render_demo_image``), including the clean version of a defect image.

``demo_spec.json`` holds ``{"generator": "anogen.data.demo", "format": 1, "spec": {...},
"layout": {...}}``; ``read_demo_spec(root)`` returns the spec part.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anogen.config import load_schema, validate_config
from anogen.errors import ConfigError, DataError
from anogen.keys import canonical_json

__all__ = [
    "DEMO_DEFAULTS",
    "DEMO_CATEGORIES",
    "SPEC_FILE",
    "normalize_demo_spec",
    "demo_layout",
    "generate_demo_dataset",
    "read_demo_spec",
    "is_demo_folder",
]


def _schema_demo_defaults() -> dict[str, Any]:
    return {name: sub["default"] for name, sub in load_schema()["properties"]["demo"]["properties"].items()}


# The schema's demo section (its defaults are the one source; this is a read-only view of them).
DEMO_DEFAULTS: dict[str, Any] = _schema_demo_defaults()

DEMO_CATEGORIES: dict[str, dict[str, Any]] = {
    "brick_gray": {"defects": ["crack", "spot"], "texture": True, "grayscale": True},
    "grass_texture": {"defects": ["contamination", "hole"], "texture": True, "grayscale": False},
    "nut_object": {
        "defects": ["chip", "contamination", "scratch"],
        "texture": False,  # repeated on purpose: a fact of this category (an object), not a config default
        "grayscale": False,
    },
}

SPEC_FILE = "demo_spec.json"
MARKER_FILE = ".anogen_demo"  # survives Snakemake deleting demo_spec.json before a rerun
GENERATOR = "anogen.data.demo"
FORMAT = 1

# ----------------------------------------------------------------------------- spec


def normalize_demo_spec(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """``spec`` with the schema's ``demo`` defaults filled in and checked by the schema.

    ConfigError naming the ``demo.<key>`` for unknown keys or bad values (the schema's
    ranges are the only ones).
    """
    spec = {
        key: str(value) if isinstance(value, os.PathLike) else int(value) if isinstance(value, np.integer) else value
        for key, value in (spec or {}).items()
    }
    valid = _validated_demo(canonical_json(spec))
    if not valid["root"]:
        raise ConfigError("demo.root", "must be a non-empty path")
    # in the schema's order; the counts are integers (the schema also accepts 48.0)
    return {key: valid[key] if key == "root" else int(valid[key]) for key in DEMO_DEFAULTS}


@functools.lru_cache(maxsize=64)
def _validated_demo(spec_json: str) -> dict[str, Any]:
    """The demo section of a config holding only it (cached: every rendered image normalises its spec)."""
    spec = json.loads(spec_json)
    return validate_config({"data_root": spec.get("root") or "demo", "demo": spec})["demo"]


def demo_layout(spec: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{category: {"defects": [...], "texture": bool, "grayscale": bool}}``; touches no file."""
    normalize_demo_spec(spec)
    return {
        name: {"defects": list(info["defects"]), "texture": info["texture"], "grayscale": info["grayscale"]}
        for name, info in sorted(DEMO_CATEGORIES.items())
    }


def demo_test_names(spec: dict[str, Any] | None = None) -> list[str]:
    """File names of each defect folder of the demo (``000.png`` ...), known before it is made."""
    spec = normalize_demo_spec(spec)
    return [f"{i:03d}.png" for i in range(spec["n_test_per_defect"])]


# ----------------------------------------------------------------------------- writing


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        Image.fromarray(array).save(fh, format="PNG")
        fh.flush()
        os.fsync(fh.fileno())


def _marker(spec: dict[str, Any]) -> dict[str, Any]:
    return {"generator": GENERATOR, "format": FORMAT, "spec": spec, "layout": demo_layout(spec)}


def read_demo_spec(root: str | Path) -> dict[str, Any] | None:
    """The spec recorded in ``<root>/demo_spec.json``, or None if absent or not ours."""
    try:
        data = json.loads((Path(root) / SPEC_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        return None
    return data.get("spec")


def is_demo_folder(root: str | Path) -> bool:
    """True if ``root`` was made by generate_demo_dataset (demo_spec.json or the hidden marker)."""
    root = Path(root)
    if read_demo_spec(root) is not None:
        return True
    try:
        data = json.loads((root / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("generator") == GENERATOR


def _replaceable(root: Path) -> bool:
    if not root.exists():
        return True
    if not root.is_dir():
        return False
    entries = [e for e in os.listdir(root) if e != ".snakemake_timestamp"]
    return not entries or is_demo_folder(root)


def generate_demo_dataset(spec: dict[str, Any] | None = None) -> Path:
    """Write the demo set to ``spec["root"]`` (atomically, ``demo_spec.json`` last). Returns the root."""
    # not at the head: planning reads the demo's layout here, and must not load cv2
    from anogen.data.demo_images import render_demo_image  # loads cv2 (and imports this module)

    spec = normalize_demo_spec(spec)
    root = Path(spec["root"])
    if not _replaceable(root):
        raise DataError(
            root,
            "exists and was not made by the demo generator (no demo_spec.json or "
            f"{MARKER_FILE} inside); refusing to overwrite it. Set demo.root to another "
            "folder, or point data_root at it to use it as an MVTec-layout data set",
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        n = {"train/good": spec["n_train_good"], "test/good": spec["n_test_good"]}
        for category, info in sorted(DEMO_CATEGORIES.items()):
            subsets = dict(n)
            for defect in info["defects"]:
                subsets[f"test/{defect}"] = spec["n_test_per_defect"]
            for subset, count in subsets.items():
                defect = subset.partition("/")[2]
                for i in range(count):
                    image, mask, _ = render_demo_image(spec, category, subset, i)
                    _save_png(tmp / category / subset / f"{i:03d}.png", image)
                    if mask is not None:
                        _save_png(
                            tmp / category / "ground_truth" / defect / f"{i:03d}_mask.png",
                            mask * np.uint8(255),
                        )
        text = json.dumps(_marker(spec), indent=2, sort_keys=True) + "\n"
        (tmp / MARKER_FILE).write_text(text, encoding="utf-8")
        with open(tmp / SPEC_FILE, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _swap_into_place(tmp: Path, root: Path) -> None:
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        old.rmdir()
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, root)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(root.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
