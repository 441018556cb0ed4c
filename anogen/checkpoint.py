"""Resumable training state: atomic checkpoints and exact RNG capture.

A checkpoint holds everything a training loop needs to continue as if it had never
stopped: model/embedding tensors, optimiser state, the step, and the states of every
random generator in play (Python, NumPy, torch CPU, torch CUDA, and any explicit
``torch.Generator``). It is written with ``torch.save`` to a temporary file and renamed,
so a SIGKILL leaves either the previous checkpoint or the new one, never half of one, and
it is read back with ``weights_only=True`` (no pickle code execution).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anogen.errors import IntegrityError
from anogen.io import atomic_path


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot all random states into a ``weights_only``-loadable structure."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    py = state["python"]
    # weights_only loading turns tuples into lists for nested values; random wants tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise KeyError(f"checkpoint has no state for generator '{name}'")
        g.set_state(state["generators"][name])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, state dicts, plain Python values) atomically."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """Load a checkpoint with ``weights_only=True``; ``None`` when there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged checkpoint must not be silently ignored
        raise IntegrityError(
            path,
            f"checkpoint cannot be read ({exc})",
            rebuild_hint=f"delete {path} to restart this job from step 0",
        ) from exc
