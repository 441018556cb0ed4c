"""Atomic file writes, sha256 manifests and image reading with precise errors.

Rules every stage follows:
- a file appears under its final name only when complete (write to a temp name in the
  same directory, fsync, ``os.replace``), so a killed job never leaves a half file that a
  later run would take as done;
- every keyed directory ends with a ``manifest.json`` recording the config subset, the
  input keys and the sha256 of each file; consumers verify what they read against it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from anogen import __version__, provenance
from anogen.errors import DataError, IntegrityError
from anogen.keys import canonical_json

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20

# The (key, spec, inputs) a job was planned with (set by anogen.jobs). A manifest of that key
# must record exactly the spec and inputs its key was computed from: the stages are handed the
# hashed spec as is (runtime values arrive separately), and write_manifest checks it.
_planned: contextvars.ContextVar[tuple[str, Any, dict] | None] = contextvars.ContextVar("anogen_planned", default=None)


@contextlib.contextmanager
def planned_job(key: str, spec: Any, inputs: dict[str, str]) -> Iterator[None]:
    token = _planned.set((key, spec, dict(inputs)))
    try:
        yield
    finally:
        _planned.reset(token)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_image(path: str | Path, array: np.ndarray) -> None:
    """Save a uint8 HxW or HxWx3 array as PNG, atomically."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"expected uint8 image, got {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Read an image fully (truncation is detected) and convert it to ``mode`` ('RGB' or 'L').

    Returns uint8 HxWx3 for RGB, HxW for L. Raises DataError naming the file otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        with Image.open(path) as img:
            img.verify()  # checks the file's structure and checksums to its last byte
        with Image.open(path) as img:
            img.load()  # decodes every pixel: a truncated PNG fails here, not later
            converted = img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"unreadable or truncated image ({exc})") from exc
    return np.asarray(converted, dtype=np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header alone; DataError if the file is not an image."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError as exc:
        raise DataError(path, "file does not exist") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"unreadable image ({exc})") from exc


# ----------------------------------------------------------------------------- manifests


def write_manifest(
    directory: str | Path,
    *,
    stage: str,
    key: str,
    spec: Any,
    inputs: dict[str, str] | None = None,
    files: Iterable[str | Path] = (),
    extra: dict[str, Any] | None = None,
    name: str = MANIFEST_NAME,
) -> Path:
    """Hash ``files`` (paths relative to ``directory``) and write the manifest atomically, last."""
    directory = Path(directory)
    records: dict[str, dict[str, Any]] = {}
    for rel in sorted({str(Path(f)) for f in files}):
        full = directory / rel
        if not full.is_file():
            raise FileNotFoundError(f"manifest of {directory} lists {rel}, which does not exist")
        records[rel] = {"sha256": sha256_file(full), "bytes": full.stat().st_size}
    planned = _planned.get()
    if planned is not None and planned[0] == key:
        recorded = (canonical_json(spec), canonical_json(dict(inputs or {})))
        if recorded != (canonical_json(planned[1]), canonical_json(planned[2])):
            raise IntegrityError(
                directory / name,
                f"the {stage} manifest would record a spec or inputs other than those its key {key} was "
                "computed from (a bug in the stage's code: it must write the spec it was given)",
            )
    manifest = {
        "anogen_version": __version__,
        "stage": stage,
        "key": key,
        "spec": json.loads(canonical_json(spec)),
        "inputs": dict(sorted((inputs or {}).items())),
        "files": records,
        "extra": extra or {},
    }
    notes = provenance.current()
    if notes is not None:
        # What this result was computed from when that is not a real run's (see anogen.provenance).
        manifest["notes"] = notes
    out = directory / name
    atomic_write_json(out, manifest)
    return out


def load_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IntegrityError(path, "manifest is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(path, f"manifest is not valid JSON ({exc})") from exc


def rebuild_command(manifest_path: str | Path) -> str:
    """The one command that rebuilds the keyed artifact a manifest describes."""
    return (
        f"snakemake --cores all --force {manifest_path}   "
        "(add the --configfile/--config/--profile options of your run; this rebuilds just this "
        "artifact, then rerun your usual snakemake command)"
    )


def verify_file(
    manifest_path: str | Path,
    rel: str,
    manifest: dict[str, Any] | None = None,
    rebuild_hint: str | None = None,
) -> Path:
    """Check one file listed in a manifest against its recorded sha256; return its full path."""
    manifest_path = Path(manifest_path)
    if rebuild_hint is None:
        rebuild_hint = rebuild_command(manifest_path)
    if manifest is None:
        manifest = load_manifest(manifest_path)
    record = manifest["files"].get(rel)
    full = manifest_path.parent / rel
    if record is None:
        raise IntegrityError(full, f"not listed in {manifest_path}", rebuild_hint)
    if not full.is_file():
        raise IntegrityError(full, f"listed in {manifest_path} but missing", rebuild_hint)
    actual = sha256_file(full)
    if actual != record["sha256"]:
        raise IntegrityError(
            full,
            f"sha256 {actual[:12]}... differs from {record['sha256'][:12]}... recorded in "
            f"{manifest_path}: the cached file was truncated or edited",
            rebuild_hint,
        )
    return full


def verify_manifest(manifest_path: str | Path, rebuild_hint: str | None = None) -> dict[str, Any]:
    """Verify every file a manifest lists; return the manifest."""
    manifest = load_manifest(manifest_path)
    if rebuild_hint is None:
        rebuild_hint = rebuild_command(manifest_path)
    for rel in manifest["files"]:
        verify_file(manifest_path, rel, manifest, rebuild_hint)
    return manifest


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file_cached(path: str | Path) -> str:
    """``sha256_file`` memoised on (absolute path, size, mtime_ns).

    For small files whose hash goes into a content key at DAG-build time (box templates,
    imported embeddings): Snakemake evaluates a key many times while it plans, and the dry
    run stays cheap. A file rewritten in place gets a new mtime or size, hence a fresh hash.
    """
    full = Path(path).resolve()
    st = full.stat()
    cache_key = (str(full), st.st_size, st.st_mtime_ns)
    if cache_key not in _SHA256_CACHE:
        _SHA256_CACHE[cache_key] = sha256_file(full)
    return _SHA256_CACHE[cache_key]
