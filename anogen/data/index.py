"""What every data layout returns, and the rules every layout lists files by.

A layout (:mod:`anogen.data.layouts`) turns its folders or split files into the types here, so
support sets, boxes, detectors and the evaluation never know which layout the images came from:

- :class:`CategoryIndex` of :class:`TestItem` s: one category, validated from image headers
  (``scan_category``);
- :class:`CategoryFiles`: one category's files by role as listed, not validated, for the content
  keys (``category_files``; ``anogen.data.fingerprint``).

The rules shared by all layouts: category and defect names become path components of results,
so they must match ``^[A-Za-z0-9][A-Za-z0-9_.-]*$`` and must not contain ``..``
(:func:`validate_name`); hidden entries (names starting with ``.``) and the files operating
systems leave in folders (``OS_JUNK_FILES``: Thumbs.db, desktop.ini) are passed over everywhere
(:func:`is_skipped`), while any other file in an image folder that is not an image is an error
rather than being skipped silently (:func:`list_images`); a data file's one name is its path
relative to the data root (:func:`relative_to_root`). Every problem either raises a
:class:`~anogen.errors.DataError` naming the file or, with an ``errors`` list
(``anogen check-data``), is collected there (:func:`report`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from anogen.data.images import GRAY_MODES, IMAGE_EXTENSIONS, check_pair, is_image_file, read_header
from anogen.errors import DataError

GOOD = "good"
MASK_SUFFIX = "_mask"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What Windows writes into folders it shows (thumbnail caches, folder settings), compared in
# lower case as Windows does: never data, so skipped wherever data is listed, like hidden files
# (macOS' .DS_Store and ._* are hidden already). The one list of them.
OS_JUNK_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini"})

__all__ = [
    "GOOD",
    "MASK_SUFFIX",
    "OS_JUNK_FILES",
    "TestItem",
    "CategoryIndex",
    "CategoryFiles",
    "validate_name",
    "checked_names",
    "is_os_junk",
    "is_skipped",
    "report",
    "list_images",
    "checked_headers",
    "is_grayscale",
    "select_defects",
    "relative_to_root",
    "under_root",
    "choose_defects",
    "check_shots",
    "pair_ok",
    "build_index",
]


# ----------------------------------------------------------------------------- names


def validate_name(name: str, path: str | Path, what: str) -> str:
    """Return ``name`` if it is a safe path component, else DataError naming ``path``."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise DataError(
            path,
            f"{what} folder name {name!r} is not allowed: names must match "
            f"{NAME_PATTERN.pattern} and not contain '..' (they become result paths); "
            "rename the folder",
        )
    return name


def checked_names(names, parent: Path, what: str, rejected: list | None) -> list[str]:
    """Names that are valid result path components; invalid ones raise, or go to ``rejected``."""
    out = []
    for name in names:
        try:
            out.append(validate_name(name, parent / name, what))
        except DataError as exc:
            if rejected is None:
                raise
            rejected.append(exc)
    return out


def is_os_junk(name: str) -> bool:
    """An operating system's file in a data folder (``OS_JUNK_FILES``)."""
    return name.lower() in OS_JUNK_FILES


def is_skipped(name: str) -> bool:
    """A folder entry that data listings pass over: hidden, or an operating system's file."""
    return name.startswith(".") or is_os_junk(name)


# ----------------------------------------------------------------------------- listing and checking


def report(errors: list | None, error: DataError) -> None:
    """Raise ``error``, or collect it when ``errors`` is a list (``anogen check-data``)."""
    if errors is None:
        raise error
    errors.append(error)


def list_images(folder: str | Path, errors: list | None = None) -> list[Path]:
    """Sorted image files of ``folder``. A file that is not an image is a DataError, unless
    ``is_skipped`` (hidden, or an operating system's Thumbs.db / desktop.ini).

    With an ``errors`` list, problems are collected there and the offending files skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        report(errors, DataError(folder, "folder does not exist"))
        return []
    paths = []
    with os.scandir(folder) as it:
        for entry in it:
            if is_skipped(entry.name) or entry.is_dir():
                continue
            if not is_image_file(entry.name):
                report(
                    errors,
                    DataError(
                        folder / entry.name,
                        "is not an image (accepted extensions: "
                        f"{', '.join(e[1:] for e in IMAGE_EXTENSIONS)}); move it out of the data folder",
                    ),
                )
                continue
            paths.append(folder / entry.name)
    return sorted(paths, key=lambda p: p.name)


def checked_headers(paths: list[Path], errors: list | None) -> tuple[list[Path], list[str]]:
    """The paths whose header reads, and their modes (unreadable ones raise or are collected)."""
    kept, modes = [], []
    for path in paths:
        try:
            modes.append(read_header(path)[1])
        except DataError as exc:
            report(errors, exc)
            continue
        kept.append(path)
    return kept, modes


def is_grayscale(modes: list[str]) -> bool:
    """A category is grayscale when its first training image is (``checked_headers``' modes)."""
    return bool(modes) and modes[0] in GRAY_MODES


def select_defects(
    available: list[str],
    defects: Iterable[str] | None,
    where: Callable[[str], Path],
    missing: Callable[[str], str],
    errors,
) -> list[str]:
    """The requested defect types (all ``available`` for None), sorted, without good or repeats.

    A bad name stops (``validate_name``); a defect type not ``available`` is reported as
    ``DataError(where(defect), missing(defect))`` (collected in ``errors`` when given). Every layout
    chooses its defect types here.
    """
    if defects is None:
        return list(available)
    chosen = []
    for defect in defects:
        validate_name(defect, where(defect), "defect")
        if defect == GOOD:
            continue
        if defect not in available:
            report(errors, DataError(where(defect), missing(defect)))
            continue
        if defect not in chosen:
            chosen.append(defect)
    return sorted(chosen)


# ----------------------------------------------------------------------------- index


@dataclass
class TestItem:
    """One test image: ``defect`` is ``'good'`` for normal images, which have no mask."""

    __test__ = False  # not a pytest test class

    path: Path
    defect: str
    mask: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.defect != GOOD


@dataclass
class CategoryIndex:
    root: Path
    category: str
    train_good: list[Path]
    test: list[TestItem]
    grayscale: bool
    defects: list[str] = field(default_factory=list)
    # Where each defect's images come from, for error messages (other layouts than MVTec's).
    defect_dirs: dict[str, Path] = field(default_factory=dict)

    def defect_path(self, defect: str) -> Path:
        return self.defect_dirs.get(defect, self.root / self.category / "test" / defect)

    def defect_items(self, defect: str) -> list[TestItem]:
        """Test items of one defect type (``'good'`` gives the normal test images)."""
        if defect != GOOD and defect not in self.defects:
            raise DataError(
                self.defect_path(defect),
                f"defect type {defect!r} is not part of this scan (scanned: {', '.join(self.defects) or 'none'})",
            )
        return [item for item in self.test if item.defect == defect]

    @property
    def good_test(self) -> list[TestItem]:
        return self.defect_items(GOOD)

    @property
    def anomalous_test(self) -> list[TestItem]:
        return [item for item in self.test if item.is_anomalous]

    def relpath(self, path: str | Path) -> str:
        """``path`` relative to the data root, POSIX style (e.g. ``bottle/test/crack/000.png``)."""
        return relative_to_root(self.root, path)


@dataclass(frozen=True)
class CategoryFiles:
    """Every file of one category, by role, as listed (not validated)."""

    root: Path
    train_good: tuple[Path, ...]
    test: dict[str, tuple[Path, ...]]  # defect (or 'good') -> images
    masks: dict[str, dict[str, Path]]  # defect -> image stem -> mask file

    @classmethod
    def from_index(cls, index: CategoryIndex) -> CategoryFiles:
        """The files of a scan that collected its problems (the layouts listed from a split file
        or the config: a broken file fails the job that reads it, not the planning; it is left
        out of the fingerprint, and fixing it changes the fingerprint)."""
        test: dict[str, list[Path]] = {}
        masks: dict[str, dict[str, Path]] = {}
        for item in index.test:
            test.setdefault(item.defect, []).append(Path(item.path))
            if item.mask is not None:
                masks.setdefault(item.defect, {})[Path(item.path).stem] = Path(item.mask)
        return cls(
            Path(index.root),
            tuple(Path(p) for p in index.train_good),
            {d: tuple(sorted(paths, key=lambda p: p.name)) for d, paths in test.items()},
            masks,
        )

    def test_names(self, defect: str) -> list[str]:
        return [p.name for p in self.test.get(defect, ())]

    def mask_of(self, defect: str, image: Path) -> Path | None:
        return self.masks.get(defect, {}).get(image.stem)

    def relpath(self, defect: str, name: str) -> str:
        """Root-relative POSIX path of the test image ``name`` of ``defect`` (as listed)."""
        path = self._test_by_name.get(defect, {}).get(name)
        if path is None:
            raise KeyError(f"{defect}/{name}")
        return relative_to_root(self.root, path)

    @functools.cached_property
    def _test_by_name(self) -> dict[str, dict[str, Path]]:
        """defect -> file name -> the first test image listed under that name (``relpath``'s index)."""
        index: dict[str, dict[str, Path]] = {}
        for defect, paths in self.test.items():
            by_name = index[defect] = {}
            for path in paths:
                by_name.setdefault(path.name, path)
        return index


def _normalised_str(path: str | PurePosixPath) -> str:
    """``str(Path(path))`` without building a new Path when ``path`` already is one."""
    return str(path) if isinstance(path, PurePosixPath) else str(Path(path))


def relative_to_root(root: str | Path, path: str | Path) -> str:
    """``path`` relative to the data root ``root``, POSIX style: the one name of a data file.

    Tried as given, then with both resolved (a data root reached through a symlink); a path
    outside the root (a Folder-layout folder given as an absolute path) gets a ``../`` form.
    """
    if os.sep == "/":  # fast path, same answer as Path.relative_to: planning names thousands of files
        p, r = _normalised_str(path), _normalised_str(root)
        if p.startswith(r + "/"):
            return p[len(r) + 1 :]
    path, root = Path(path), Path(root)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    try:  # resolved only when needed: resolving costs a few syscalls per file, and planning names thousands
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        pass
    return Path(os.path.relpath(path, root)).as_posix()


# ----------------------------------------------------------------------------- building an index
# For the layouts whose files are named by a split file or the config (VisA, Folder, Real-IAD).


def under_root(root: Path, value: str) -> Path:
    """A path option: relative to the data root unless absolute."""
    path = Path(value)
    return path if path.is_absolute() else Path(root) / path


def choose_defects(available: list[str], defects: Iterable[str] | None, where, category: str, errors) -> list[str]:
    """``select_defects`` with one place (``where``: the split file or folder) for every error."""
    types = ", ".join(available) or "none"
    return select_defects(
        available,
        defects,
        lambda _: where,
        lambda defect: f"category {category} has no defect type {defect!r} (defect types: {types})",
        errors,
    )


def check_shots(where, n: int, min_shots: int | None, errors) -> None:
    """At least ``min_shots`` anomalous images of a defect type (the support set's size)."""
    if min_shots is not None and n < min_shots:
        report(
            errors,
            DataError(
                where,
                f"has {n} anomalous image(s) but support.shots = {min_shots} real anomalies "
                "are needed for the support set; lower support.shots or exclude this defect",
            ),
        )


def pair_ok(image: Path, mask: Path, errors) -> bool:
    """``check_pair``, reported; whether the pair may be used."""
    try:
        check_pair(image, mask)
    except DataError as exc:
        report(errors, exc)
        return False
    return True


def build_index(
    root: Path,
    category: str,
    train: list[Path],
    test: list[TestItem],
    defects: list[str],
    defect_dirs: dict[str, Path],
    where: Path,
    errors,
) -> CategoryIndex:
    """The index of a scanned category; the training images' headers are checked here."""
    if not train:
        report(errors, DataError(where, f"category {category} has no normal training image"))
    train, modes = checked_headers(train, errors)
    return CategoryIndex(
        root=root,
        category=category,
        train_good=train,
        test=test,
        grayscale=is_grayscale(modes),
        defects=defects,
        defect_dirs=defect_dirs,
    )
