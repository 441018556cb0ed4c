"""The images of a texture folder (``detectors.texture_source``, e.g. DTD's ``images/``).

Listed by one function for both readers: the detectors' texture source
(``anogen.detectors.textures``) and the plan, which puts the folder's fingerprint into the key of
every detector that pastes textures (path below the folder, size and mtime_ns of each image, as
for the data set's files: ``anogen.data.fingerprint``; nothing decoded).
"""

from __future__ import annotations

from pathlib import Path

from anogen.data.fingerprint import fingerprint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def texture_files(folder: str | Path) -> list[Path]:
    """Every image below ``folder``, recursively, sorted (empty when it is not a folder)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def texture_fingerprint(folder: str | Path, files: list[Path] | None = None) -> str:
    """The fingerprint of ``folder``'s images (``files`` when they are already listed)."""
    return fingerprint(Path(folder), texture_files(folder) if files is None else files)
