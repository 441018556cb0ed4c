"""Data set layouts: one module per layout, behind one small interface; this registry dispatches.

``data_layout`` in the config picks the layout:

- ``mvtec`` (:mod:`.mvtec`): ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>}``;
  also MPDD;
- ``visa`` (:mod:`.visa`): VisA's split file ``split_csv/1cls.csv``;
- ``folder`` (:mod:`.folder`): anomalib's Folder layout, one entry per category in ``folder.categories``;
- ``realiad`` (:mod:`.realiad`): Real-IAD's per-category JSON split files, multi-view samples.

Every layout module implements :class:`Layout` and returns the types of :mod:`anogen.data.index`
(:class:`~anogen.data.index.CategoryIndex` with ``train_good`` and ``TestItem`` s with masks;
:class:`~anogen.data.index.CategoryFiles` for the content keys), so support sets, boxes, detectors
and the evaluation do not know which layout the images came from. **Adding a layout is a new
module and one line in** ``LAYOUTS`` (and, like every config key, its options in
``anogen/config.schema.yaml``: the ``data_layout`` enum and the option block its ``CONFIG_KEYS``
name). No code outside the layout modules branches on the layout's name, except the config's
own checks of the layouts' options (``anogen.config``, which imports nothing of the data layer).

The layout options travel to every job as the JSON dict :func:`layout_spec` returns (they
identify the data, so they are part of the dataset content key); ``None`` means the MVTec
layout. Listing (:func:`discover`, :func:`list_categories`, :func:`list_defects`) opens no image
and is cheap enough for Snakemake's DAG construction; :func:`scan_category` checks image headers
(existence, readability, mask sizes) and names the file in every error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from anogen.data.index import CategoryFiles, CategoryIndex
from anogen.data.layouts import folder, mvtec, realiad, visa
from anogen.errors import DataError


class Layout(Protocol):
    """What a layout module provides (module-level names). ``options`` is :func:`layout_spec`'s dict."""

    # The config keys whose values are this layout's options (data identity: in every content key).
    CONFIG_KEYS: tuple[str, ...]
    # The sample (one physical object) a test image belongs to, given its data-root-relative path,
    # for layouts where one object has several images (its views leave the test set together when
    # one is a support image); None when every image is its own sample.
    sample_of: Callable[[str], str] | None

    def list_categories(self, root: Path, options: dict | None, rejected: list | None) -> list[str]:
        """Sorted category names; cheap. Badly named ones raise, or with a list go to ``rejected``."""

    def list_defects(self, root: Path, category: str, options: dict | None, rejected: list | None) -> list[str]:
        """Sorted defect types of a category; cheap."""

    def scan_category(
        self,
        root: Path,
        category: str,
        options: dict | None,
        defects: Iterable[str] | None,
        min_shots: int | None,
        errors: list | None,
    ) -> CategoryIndex:
        """One category validated from image headers (see :func:`scan_category`)."""

    def category_files(self, root: Path, category: str, options: dict | None) -> CategoryFiles:
        """Every file of one category by role, as listed (not validated), for the content keys."""


LAYOUTS: dict[str, Layout] = {"mvtec": mvtec, "visa": visa, "folder": folder, "realiad": realiad}

__all__ = [
    "LAYOUTS",
    "Layout",
    "layout_spec",
    "layout_name",
    "layout_module",
    "discover",
    "list_categories",
    "list_defects",
    "scan_category",
    "category_files",
]


# ----------------------------------------------------------------------------- options


def layout_spec(config: dict) -> dict:
    """The layout options of a validated config, as one JSON-able dict (data identity).

    This is what every data-reading job receives (``params.dataset``) and what the
    dataset part of the content keys holds: only the options of the chosen layout.
    """
    name = config["data_layout"]
    spec: dict[str, Any] = {"data_layout": name}
    for key in layout_module({"data_layout": name}).CONFIG_KEYS:
        value = config[key]
        spec[key] = dict(value) if isinstance(value, dict) else value
    return spec


def layout_name(options: dict | None) -> str:
    """The layout of ``layout_spec`` options; no options at all means the MVTec layout."""
    return options["data_layout"] if options else "mvtec"


def layout_module(options: dict | None) -> Layout:
    """The module of the layout ``options`` name."""
    name = layout_name(options)
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown data layout {name!r} (expected one of {tuple(LAYOUTS)})") from None


# ----------------------------------------------------------------------------- dispatch


def discover(root: str | Path, options: dict | None) -> tuple[dict[str, dict], list[DataError]]:
    """``({category: {"defects", "texture", "rejected"}}, rejected categories)``; cheap.

    A category or defect whose name cannot be a result path component is not listed but
    returned as a DataError (``rejected``): ``Plan`` fails on it only when the config
    selects it (``categories: all`` / ``defects: all``), so a stray folder that the config
    leaves out does not stop the run.
    """
    root = Path(root)
    rejected: list[DataError] = []
    found = {}
    for category in list_categories(root, options, rejected):
        bad_defects: list[DataError] = []
        defects = list_defects(root, category, options, bad_defects)
        # "texture": folders cannot tell a texture; the config's per-category options can (Plan.texture)
        entry = {"defects": defects, "texture": False}  # repeated on purpose: a fact of the folders, not a default
        found[category] = {**entry, "rejected": bad_defects}
    return found, rejected


def list_categories(root: str | Path, options: dict | None = None, rejected: list | None = None) -> list[str]:
    """Sorted category names of the layout (see :func:`discover` for ``rejected``)."""
    return layout_module(options).list_categories(Path(root), options, rejected)


def list_defects(
    root: str | Path, category: str, options: dict | None = None, rejected: list | None = None
) -> list[str]:
    """Sorted defect types of a category; cheap."""
    return layout_module(options).list_defects(Path(root), category, options, rejected)


def scan_category(
    root: str | Path,
    category: str,
    options: dict | None = None,
    defects: Iterable[str] | None = None,
    min_shots: int | None = None,
    errors: list | None = None,
) -> CategoryIndex:
    """List and validate one category from image headers only.

    ``defects`` restricts the anomalous test items (``()`` = none, ``None`` = all; normal test
    images are always included); ``min_shots`` requires that many images per scanned defect type
    (the support set size). The first problem raises a DataError naming the file; with an
    ``errors`` list every problem is collected there instead and the offending item left out.
    """
    return layout_module(options).scan_category(Path(root), category, options, defects, min_shots, errors)


def category_files(root: str | Path, category: str, options: dict | None) -> CategoryFiles:
    """The files of one category by role, for content keys.

    MVTec layout: a directory listing only. The others: their scan, collecting problems
    instead of raising (a broken file fails the job that reads it, not the planning; it is
    left out of the fingerprint, and fixing it changes the fingerprint).
    """
    return layout_module(options).category_files(Path(root), category, options)
