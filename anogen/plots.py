"""Loss-curve figures (matplotlib, headless) for the report.

Stage 1 plots its mask-weighted embedding loss; stage 3 plots every loss term of a detector's
``train_log.csv``. Raw values are drawn light and a moving average (window ~2% of the run)
dark, so a noisy curve still shows its trend.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from anogen.io import MANIFEST_NAME, atomic_path, load_manifest, verify_file

__all__ = ["plot_loss_curves", "read_loss_columns", "moving_average", "detector_loss_terms", "plot_detector_training"]

# train_log.csv columns that are not loss terms
NON_LOSS_COLUMNS = ("step", "seconds", "lr", "phase", "weak_dropped")


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (shorter at the start); NaNs are skipped."""
    v = np.asarray(values, dtype=np.float64)
    window = max(1, int(window))
    out = np.empty_like(v)
    for i in range(v.size):
        chunk = v[max(0, i - window + 1) : i + 1]
        chunk = chunk[np.isfinite(chunk)]
        out[i] = chunk.mean() if chunk.size else np.nan
    return out


def read_loss_columns(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(steps, {term: values})`` from a CSV with a ``step`` column; empty cells are NaN."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return np.zeros(0), {}

    def num(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    columns = [c for c in rows[0] if c not in NON_LOSS_COLUMNS]
    steps = np.array([num(r.get("step")) for r in rows])
    values = {c: np.array([num(r.get(c)) for r in rows]) for c in columns}
    return steps, {c: v for c, v in values.items() if np.isfinite(v).any()}


def detector_loss_terms(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The loss terms of a detector's ``train_log.csv`` (learning rate, time and phase left out)."""
    return read_loss_columns(path)


def plot_loss_curves(
    path: str | Path,
    steps: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "training step",
    ylabel: str = "loss",
    log_y: bool = False,
) -> None:
    """One axis per curve (stacked), raw light and smoothed dark; written atomically as PNG."""
    plt = pyplot()
    names = list(curves)
    n = max(1, len(names))
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 2.2 + 1.6 * n), sharex=True, squeeze=False)
    steps = np.asarray(steps, dtype=np.float64)
    window = max(1, steps.size // 50)
    for ax, name in zip(axes[:, 0], names or [None]):
        if name is None:
            ax.text(0.5, 0.5, "no loss values recorded", ha="center", va="center", transform=ax.transAxes)
            ax.set_ylabel(ylabel)
            continue
        values = np.asarray(curves[name], dtype=np.float64)
        # light under a moving average; dark when the run is too short to smooth
        ax.plot(
            steps,
            values,
            color="#9ab8e0" if window > 1 else "#1f3f99",
            linewidth=0.8 if window > 1 else 1.4,
            label="per step",
        )
        if window > 1:
            ax.plot(
                steps, moving_average(values, window), color="#1f3f99", linewidth=1.6, label=f"mean of {window} steps"
            )
        finite = values[np.isfinite(values)]
        if log_y and finite.size and (finite > 0).all():
            ax.set_yscale("log")
        ax.set_ylabel(name if n > 1 else ylabel)
        ax.grid(True, color="#e6e6e6", linewidth=0.6)
        ax.legend(loc="upper right", fontsize="small", frameon=False)
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_detector_training(detector_dir: str | Path, out_png: str | Path) -> None:
    """Every loss term of a trained detector's ``train_log.csv`` (verified against its manifest)."""
    manifest_path = Path(detector_dir) / MANIFEST_NAME
    manifest = load_manifest(manifest_path)
    log_path = verify_file(manifest_path, "train_log.csv", manifest)
    steps, curves = detector_loss_terms(log_path)
    spec = manifest.get("spec", {})
    variant = spec.get("variant", "?")  # repeated on purpose: a manifest's field, not the studies' arm default
    title = f"{spec.get('detector', '?')} ({variant}) on {spec.get('category', '?')}: training losses"
    plot_loss_curves(out_png, steps, curves, title=title)
