"""Fingerprints of the data files each artifact reads, for its content key.

A content key must change when a data file it was computed from changes, and only then. At
DAG-build time no image may be decoded (MVTec AD has about 5,400 files and the dry run must
stay fast), so a file is identified by its path relative to the data root, its size and its
modification time in nanoseconds (``os.stat``): replacing an image, fixing a mask or adding a
test image changes the fingerprint of exactly the artifacts that read that folder. Touching a
file without changing it (or copying the data set without preserving times) reruns its readers:
the safe direction.

The listing is lenient on purpose: a missing mask or a stray file does not stop planning (the
one job that reads it fails, naming the file, see ``anogen.data.mvtec.scan_category``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from anogen.data.mvtec import relative_to_root
from anogen.keys import KEY_LENGTH, canonical_json

MASK_SUFFIX = "_mask"
GOOD = "good"


@dataclasses.dataclass(frozen=True)
class CategoryFiles:
    """Every file of one category, by role, as listed (not validated)."""

    root: Path
    train_good: tuple[Path, ...]
    test: dict[str, tuple[Path, ...]]  # defect (or 'good') -> images
    masks: dict[str, dict[str, Path]]  # defect -> image stem -> mask file

    def test_names(self, defect: str) -> list[str]:
        return [p.name for p in self.test.get(defect, ())]

    def mask_of(self, defect: str, image: Path) -> Path | None:
        return self.masks.get(defect, {}).get(image.stem)

    def relpath(self, defect: str, name: str) -> str:
        """Root-relative POSIX path of the test image ``name`` of ``defect`` (as listed)."""
        for path in self.test.get(defect, ()):
            if path.name == name:
                return relative_to_root(self.root, path)
        raise KeyError(f"{defect}/{name}")


def _files(folder: Path) -> tuple[Path, ...]:
    """Sorted non-hidden files of ``folder`` (empty when it does not exist)."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if not e.name.startswith(".") and e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return ()
    return tuple(folder / n for n in sorted(names))


def _subdirs(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def list_mvtec_files(root: str | Path, category: str) -> CategoryFiles:
    """The files of an MVTec-AD-layout category (``train/good``, ``test/*``, ``ground_truth/*``)."""
    root = Path(root)
    cat = root / category
    test = {d: _files(cat / "test" / d) for d in _subdirs(cat / "test")}
    masks: dict[str, dict[str, Path]] = {}
    for defect in _subdirs(cat / "ground_truth"):
        for path in _files(cat / "ground_truth" / defect):
            stem = path.stem
            if stem.endswith(MASK_SUFFIX):
                masks.setdefault(defect, {})[stem[: -len(MASK_SUFFIX)]] = path
    return CategoryFiles(root, _files(cat / "train" / GOOD), test, masks)


def file_record(root: Path, path: Path) -> list:
    """``[relative path, size, mtime_ns]`` of one file (``[relpath, None, None]`` if it is gone)."""
    rel = relative_to_root(root, path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [rel, None, None]
    return [rel, st.st_size, st.st_mtime_ns]


def fingerprint(root: Path, paths: Iterable[Path], **extra) -> str:
    """Short hash of the records of ``paths`` (order-independent) plus any ``extra`` values."""
    records = sorted(file_record(root, Path(p)) for p in paths)
    payload = canonical_json({"files": records, **extra})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_LENGTH]
