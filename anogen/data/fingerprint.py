"""Fingerprints of the data files each artifact reads, for its content key.

A content key must change when a data file it was computed from changes, and only then. At
DAG-build time no image may be decoded (MVTec AD has about 5,400 files and the dry run must
stay fast), so a file is identified by its path relative to the data root, its size and its
modification time in nanoseconds (``os.stat``): replacing an image, fixing a mask or adding a
test image changes the fingerprint of exactly the artifacts that read that folder. Touching a
file without changing it (or copying the data set without preserving times) reruns its readers:
the safe direction.

The listing is lenient on purpose: a missing mask or a stray file does not stop planning (the
one job that reads it fails, naming the file, see ``scan_category`` in ``anogen.data.layouts``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from anogen.data.index import is_skipped, relative_to_root
from anogen.keys import KEY_LENGTH, canonical_json

# Folder listings, shared by every Plan of this process (a study plans each of its arms over the
# same data set). An entry is served only while the folder's (device, inode, mtime, ctime) is
# what it was when the folder was listed: adding, removing or renaming an entry changes its
# mtime and ctime. File contents are not listed here (``fingerprint`` stats every file each
# time), so they cannot go stale. Two guards keep a listing from outliving its folder:
# - a folder changed less than _SETTLED_NS before it was listed is not stored: a file system
#   stamps times from a coarse clock (a few ms, whole seconds on some), so a change made in the
#   same tick as the last one could leave the stamps as they were;
# - a folder holding a symlink is not stored: its target can change without the folder.
_LISTINGS: dict[str, tuple[tuple[int, int, int, int], tuple[tuple[Path, ...], tuple[str, ...]]]] = {}
_SETTLED_NS = 5 * 10**9
_MAX_LISTINGS = 100_000
_NOT_A_FOLDER: tuple[tuple[Path, ...], tuple[str, ...]] = ((), ())


def clear_listing_cache() -> None:
    """Forget every stored folder listing (each folder is listed again when next asked)."""
    _LISTINGS.clear()


def _listing(folder: Path) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """(sorted files as paths, sorted subfolder names) of ``folder``, less hidden entries and an
    operating system's files (``index.is_skipped``: a Thumbs.db appearing changes no key); both
    empty when it does not exist."""
    key = str(folder)
    now = time.time_ns()
    try:
        st = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return _NOT_A_FOLDER
    stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    stored = _LISTINGS.get(key)
    if stored is not None and stored[0] == stamp:
        return stored[1]
    files, dirs, links = [], [], False
    try:
        with os.scandir(folder) as it:
            for e in it:
                if is_skipped(e.name):
                    continue
                links = links or e.is_symlink()
                if e.is_file():
                    files.append(e.name)
                elif e.is_dir():
                    dirs.append(e.name)
    except (FileNotFoundError, NotADirectoryError):
        return _NOT_A_FOLDER
    listing = (tuple(folder / n for n in sorted(files)), tuple(sorted(dirs)))
    if links or max(st.st_mtime_ns, st.st_ctime_ns) >= now - _SETTLED_NS:
        _LISTINGS.pop(key, None)
    else:
        if len(_LISTINGS) >= _MAX_LISTINGS:
            _LISTINGS.clear()
        _LISTINGS[key] = (stamp, listing)
    return listing


def listed_files(folder: Path) -> tuple[Path, ...]:
    """Sorted files of ``folder`` as ``_listing`` keeps them (empty when it does not exist)."""
    return _listing(folder)[0]


def listed_subdirs(folder: Path) -> list[str]:
    """Sorted subfolder names of ``folder`` as ``_listing`` keeps them."""
    return list(_listing(folder)[1])


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
    records = sorted(file_record(root, p if isinstance(p, Path) else Path(p)) for p in paths)
    payload = canonical_json({"files": records, **extra})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def file_fingerprint(path: str | Path) -> str:
    """The fingerprint of one file a config key names (the DeSTSeg teacher): its name, size, mtime_ns."""
    path = Path(path)
    return fingerprint(path.parent, [path])
