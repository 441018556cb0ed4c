"""MVTec AD folder layout: listing, scanning with validation, and image/mask loading.

Layout (any image size; MVTec's own images are 700-1024 px square)::

    <root>/<category>/train/good/<name>.<ext>
    <root>/<category>/test/good/<name>.<ext>
    <root>/<category>/test/<defect>/<stem>.<ext>
    <root>/<category>/ground_truth/<defect>/<stem>_mask.<ext>

Accepted extensions: png, jpg, jpeg, bmp, tif, tiff (any case). Hidden entries (names
starting with ``.``) and the files operating systems leave in folders (``OS_JUNK_FILES``:
Thumbs.db, desktop.ini) are ignored everywhere (``is_skipped``); any other file in an image
folder that is not an image is an error rather than being skipped silently. Category and defect names become
path components of results, so they must match ``^[A-Za-z0-9][A-Za-z0-9_.-]*$`` and must
not contain ``..``.

``list_categories`` and ``list_defects`` only list directories (no image is opened) and
are cheap enough for Snakemake's DAG construction. ``scan_category`` validates a category
from image headers only; ``load_image`` / ``load_mask`` decode fully, so a truncated file
raises :class:`~anogen.errors.DataError` naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from anogen.data.geometry import to_square
from anogen.errors import DataError
from anogen.io import read_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
MASK_SUFFIX = "_mask"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# What Windows writes into folders it shows (thumbnail caches, folder settings), compared in
# lower case as Windows does: never data, so skipped wherever data is listed, like hidden files
# (macOS' .DS_Store and ._* are hidden already). The one list of them.
OS_JUNK_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini"})

__all__ = [
    "IMAGE_EXTENSIONS",
    "GOOD",
    "TestItem",
    "CategoryIndex",
    "validate_name",
    "is_image_file",
    "is_os_junk",
    "is_skipped",
    "OS_JUNK_FILES",
    "list_categories",
    "list_defects",
    "list_images",
    "scan_category",
    "load_image",
    "load_mask",
    "relative_to_root",
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


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_os_junk(name: str) -> bool:
    """An operating system's file in a data folder (``OS_JUNK_FILES``)."""
    return name.lower() in OS_JUNK_FILES


def is_skipped(name: str) -> bool:
    """A folder entry that data listings pass over: hidden, or an operating system's file."""
    return name.startswith(".") or is_os_junk(name)


def _subdirs(path: Path) -> list[str]:
    """Sorted names of non-hidden subdirectories of ``path`` (os.scandir only)."""
    names = []
    with os.scandir(path) as it:
        for entry in it:
            if is_skipped(entry.name):
                continue
            if entry.is_dir():
                names.append(entry.name)
    return sorted(names)


def _require_dir(path: Path, problem: str) -> None:
    if not path.is_dir():
        raise DataError(path, problem)


# ----------------------------------------------------------------------------- listing


def _checked_names(names, parent: Path, what: str, rejected: list | None) -> list[str]:
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


def list_categories(root: str | Path, rejected: list | None = None) -> list[str]:
    """Sorted names of the subfolders of ``root`` that contain ``train/good``.

    Cheap: only directories are listed. DataError if ``root`` is missing or holds no
    category. A category folder whose name cannot be used in result paths raises, unless
    ``rejected`` is a list: then its DataError is appended there and the folder skipped
    (``Plan`` fails only when the config selects such a folder).
    """
    root = Path(root)
    _require_dir(root, "data root does not exist or is not a directory")
    found = [name for name in _subdirs(root) if (root / name / "train" / GOOD).is_dir()]
    categories = _checked_names(found, root, "category", rejected)
    if not categories and not (rejected and found):
        raise DataError(
            root,
            "contains no category folder with train/good/ inside "
            "(expected the MVTec AD layout <root>/<category>/train/good/*.png)",
        )
    return categories


def list_defects(root: str | Path, category: str, rejected: list | None = None) -> list[str]:
    """Sorted defect types of a category: the subfolders of ``test/`` except ``good``. Cheap.

    Badly named defect folders raise, or with a ``rejected`` list are appended there.
    """
    root = Path(root)
    cat_dir = root / category
    _require_dir(cat_dir, f"category folder of {category!r} does not exist")
    test_dir = cat_dir / "test"
    _require_dir(test_dir, "test folder is missing (expected test/<defect>/ and test/good/)")
    return _checked_names([n for n in _subdirs(test_dir) if n != GOOD], test_dir, "defect", rejected)


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


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(size, mode) from the header; DataError naming the file if it is not an image."""
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except FileNotFoundError as exc:
        raise DataError(path, "file does not exist") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"unreadable image ({exc})") from exc


def _mask_candidates(gt_dir: Path) -> dict[str, list[Path]]:
    """Map image stem -> mask files ``<stem>_mask.<ext>`` found in ``gt_dir``."""
    found: dict[str, list[Path]] = {}
    if not gt_dir.is_dir():
        return found
    with os.scandir(gt_dir) as it:
        for entry in it:
            if is_skipped(entry.name) or not is_image_file(entry.name):
                continue
            stem = Path(entry.name).stem
            if stem.endswith(MASK_SUFFIX):
                found.setdefault(stem[: -len(MASK_SUFFIX)], []).append(gt_dir / entry.name)
    return found


def _find_mask(candidates: dict[str, list[Path]], gt_dir: Path, image_path: Path) -> Path:
    stem = image_path.stem
    paths = sorted(candidates.get(stem, []))
    if not paths:
        raise DataError(
            image_path,
            f"anomalous test image has no mask: expected {gt_dir / (stem + MASK_SUFFIX + '.png')} "
            f"(ground_truth/<defect>/<stem>{MASK_SUFFIX}.<ext>)",
        )
    if len(paths) > 1:
        raise DataError(image_path, "has several candidate masks: " + ", ".join(str(p) for p in paths))
    return paths[0]


def scan_category(
    root: str | Path,
    category: str,
    defects: Iterable[str] | None = None,
    min_shots: int | None = None,
    errors: list | None = None,
) -> CategoryIndex:
    """List and validate one category from image headers only.

    ``defects`` restricts the anomalous test items to these defect types (normal test
    images are always included); ``None`` means every defect folder. ``min_shots``
    requires at least that many images per scanned defect type (the support set size).
    The first problem raises a DataError naming the file; with an ``errors`` list every
    problem is collected there instead and the offending items are left out.
    """
    root = Path(root)
    validate_name(category, root / category, "category")
    cat_dir = root / category
    _require_dir(cat_dir, f"category folder of {category!r} does not exist under {root}")

    train_good, grayscale = _scan_train(cat_dir / "train" / GOOD, errors)
    chosen = _chosen_defects(root, category, defects, errors)

    test: list[TestItem] = []
    good_dir = cat_dir / "test" / GOOD
    if good_dir.is_dir():
        good, _ = checked_headers(list_images(good_dir, errors), errors)
        test += [TestItem(path, GOOD, None) for path in good]
    for defect in chosen:
        test += _scan_defect(cat_dir, defect, min_shots, errors)

    return CategoryIndex(
        root=root,
        category=category,
        train_good=train_good,
        test=test,
        grayscale=grayscale,
        defects=list(chosen),
    )


def _scan_train(train_dir: Path, errors: list | None) -> tuple[list[Path], bool]:
    """The normal training images (headers checked) and whether they are grayscale."""
    train_good: list[Path] = []
    if not train_dir.is_dir():
        report(errors, DataError(train_dir, "train/good folder is missing (it holds the normal training images)"))
    else:
        train_good = list_images(train_dir, errors)
        if not train_good:
            report(errors, DataError(train_dir, "contains no training images (expected *.png etc.)"))
    train_good, modes = checked_headers(train_good, errors)
    return train_good, bool(modes) and modes[0] in _GRAY_MODES


def _chosen_defects(root: Path, category: str, defects: Iterable[str] | None, errors: list | None) -> list[str]:
    """The defect types to scan: all of them (``defects`` None), or the requested ones, sorted."""
    test_dir = root / category / "test"
    try:
        available = list_defects(root, category, [] if errors is not None else None)
    except DataError as exc:
        report(errors, exc)
        available = []
    return select_defects(
        available,
        defects,
        lambda defect: test_dir / defect,
        lambda defect: f"defect folder does not exist (defect types of {category}: {', '.join(available) or 'none'})",
        errors,
    )


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
    chooses its defect types here (``anogen.data.layouts``).
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


def _scan_defect(cat_dir: Path, defect: str, min_shots: int | None, errors: list | None) -> list[TestItem]:
    """The test items of one defect type, each paired with its checked ground-truth mask."""
    defect_dir = cat_dir / "test" / defect
    gt_dir = cat_dir / "ground_truth" / defect
    images = list_images(defect_dir, errors)
    if not images:
        report(errors, DataError(defect_dir, "defect folder contains no images"))
        return []
    if min_shots is not None and len(images) < min_shots:
        report(
            errors,
            DataError(
                defect_dir,
                f"has {len(images)} image(s) but support.shots = {min_shots} real anomalies "
                "are needed for the support set; lower support.shots or exclude this defect",
            ),
        )
    masks = _mask_candidates(gt_dir)
    seen: dict[str, Path] = {}
    items = []
    for path in images:
        if path.stem in seen:
            report(errors, DataError(path, f"has the same stem as {seen[path.stem]}, so its mask is ambiguous"))
            continue
        seen[path.stem] = path
        try:
            mask = _find_mask(masks, gt_dir, path)
            check_pair(path, mask)
        except DataError as exc:
            report(errors, exc)
            continue
        items.append(TestItem(path, defect, mask))
    return items


def checked_headers(paths: list[Path], errors: list | None) -> tuple[list[Path], list[str]]:
    """The paths whose header reads, and their modes (unreadable ones raise or are collected)."""
    kept, modes = [], []
    for path in paths:
        try:
            modes.append(_header(path)[1])
        except DataError as exc:
            report(errors, exc)
            continue
        kept.append(path)
    return kept, modes


def check_pair(image: Path, mask: Path) -> None:
    """Both headers readable and the same size, else DataError naming the file."""
    img_size, _ = _header(image)
    mask_size, _ = _header(mask)
    if img_size != mask_size:
        raise DataError(
            mask,
            f"mask size {mask_size[0]}x{mask_size[1]} differs from its image {image} ({img_size[0]}x{img_size[1]})",
        )


# ----------------------------------------------------------------------------- loading


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")


def _check_geometry(size: int | None, resize: str | None) -> None:
    """A ``size`` needs the config's ``resize`` geometry: the loaders never pick one themselves."""
    _check_size(size)
    if size is not None and resize is None:
        raise ValueError("a size needs resize (the config's 'resize': squash, pad or crop)")


def load_image(path: str | Path, size: int | None = None, resize: str | None = None) -> np.ndarray:
    """Decode fully to uint8 HxWx3 RGB (grayscale replicated); optional bicubic resize to size x size.

    With a ``size``, a non-square image is first made square by ``resize``
    (``anogen.data.geometry``: squash, pad or crop; required then); without one it is
    returned as stored.
    """
    _check_geometry(size, resize)
    array = read_image(path, "RGB")
    if size is not None:
        array = to_square(array, resize)
    if size is not None and array.shape[:2] != (size, size):
        array = np.asarray(
            Image.fromarray(array).resize((int(size), int(size)), Image.Resampling.BICUBIC),
            dtype=np.uint8,
        )
    return array


def load_mask(path: str | Path, size: int | None = None, resize: str | None = None) -> np.ndarray:
    """Decode fully to uint8 HxW in {0, 1} (any value > 0 is 1); NEAREST resize to size x size.

    With a ``size``, the same ``resize`` geometry as :func:`load_image` (padding is 0; required then).
    """
    _check_geometry(size, resize)
    array = (read_image(path, "L") > 0).astype(np.uint8)
    if size is not None:
        array = to_square(array, resize)
    if size is not None and array.shape != (size, size):
        array = np.asarray(
            Image.fromarray(array).resize((int(size), int(size)), Image.Resampling.NEAREST),
            dtype=np.uint8,
        )
    return array
