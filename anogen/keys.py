"""Content keys: short hashes that name every artifact directory.

A key is the sha256 of the canonical JSON of exactly the config values an artifact
depends on plus the keys of the artifacts it reads (a Merkle chain). Keys are computed
after schema validation has filled in defaults, so writing a default out in the config
does not change any key. Python's ``hash()`` is never used: it differs between processes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

KEY_LENGTH = 12


_PLAIN = frozenset({str, int, bool, type(None)})  # exactly these types map to themselves


def _normalise(value: Any) -> Any:
    """Map a config value to a JSON-stable form (tuples become lists, 1.0 stays a float)."""
    if type(value) in _PLAIN:  # the common case first (data fingerprints hold thousands of them)
        return value
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite float {value!r} cannot be part of a content key")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"value of type {type(value).__name__} cannot be part of a content key")


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_key(spec: Any, inputs: dict[str, str] | None = None) -> str:
    """Short content key of ``spec`` (the config subset) and ``inputs`` (upstream keys by role)."""
    payload = {"spec": spec, "inputs": dict(inputs or {})}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def test_set_id(names: Iterable[str]) -> str:
    """Short identity of a set of names: sha256 of the sorted, newline-joined names, 12 hex digits.

    An evaluation's ``test_set`` is this over the data-root-relative POSIX paths of the test
    images it evaluated (support images excluded); a study's mean row hashes the lines
    ``<category>:<test_set>`` of its categories the same way. The order given does not matter.
    """
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()[:KEY_LENGTH]
