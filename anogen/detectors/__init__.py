"""Stage 3: weakly supervised anomaly detectors (DRAEM, DeSTSeg) trained on synthetic
and/or generated anomalies.

Public API:
    train_detector(*, spec, train_images, generated_manifests, out_dir, key, inputs, device,
                   checkpoint_every, extra=None, texture_fallback=(), num_workers=None,
                   log_every=10) -> Path
    load_trained_detector(model_dir, device="cpu") -> TrainedDetector
        .image_size, .detector, .variant, .config
        .predict(images N,3,H,W float in [0, 1] at image_size)
            -> (scores np.ndarray N, maps np.ndarray N,H,W float32 anomaly probability)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anogen.detectors.destseg.network import DestsegNet
from anogen.detectors.destseg.trainer import destseg_predict
from anogen.detectors.draem.network import DraemNet
from anogen.detectors.draem.trainer import draem_predict
from anogen.detectors.train import CONFIG_FILE, MODEL_FILE, train_detector
from anogen.errors import IntegrityError
from anogen.io import load_manifest, rebuild_command, verify_file

__all__ = ["train_detector", "load_trained_detector", "TrainedDetector"]


class TrainedDetector:
    def __init__(self, model: torch.nn.Module, config: dict[str, Any], device: str):
        self.model = model.eval()
        self.config = config
        self.detector: str = config["detector"]
        self.variant: str = config["variant"]
        self.image_size: int = int(config["image_size"])
        self.device = device
        # What the detector was trained with (model_config.json records it).
        self.mixed_precision: str = config[self.detector]["mixed_precision"]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images N,3,H,W, got {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size}x{self.image_size} (the detector's "
                f"image_size), got {tuple(images.shape[2:])}"
            )
        scores, maps = [], []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(self.device, torch.float32)
            if self.detector == "draem":
                s, m = draem_predict(
                    self.model, x, self.config["draem"]["score_pool"], self.device, self.mixed_precision
                )
            else:
                s, m = destseg_predict(
                    self.model, x, self.config["destseg"]["top_k"], self.device, self.mixed_precision
                )
            scores.append(s)
            maps.append(m)
        if not scores:
            return np.zeros(0), np.zeros((0, self.image_size, self.image_size), np.float32)
        return np.concatenate(scores), np.concatenate(maps)


def load_trained_detector(model_dir: str | Path, device: str = "cpu") -> TrainedDetector:
    """Rebuild a trained detector from its directory; files are verified against the manifest."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    manifest = load_manifest(manifest_path)
    hint = rebuild_command(manifest_path)
    cfg_path = verify_file(manifest_path, CONFIG_FILE, manifest, hint)
    weights = verify_file(manifest_path, MODEL_FILE, manifest, hint)
    config = json.loads(cfg_path.read_text())
    detector = config.get("detector")
    if detector in ("draem", "destseg") and "mixed_precision" not in config.get(detector, {}):
        raise IntegrityError(cfg_path, f"no {detector}.mixed_precision recorded (written by an older anogen)", hint)
    if detector == "draem":
        c = config["draem"]
        model: torch.nn.Module = DraemNet(c["recon_base_width"], c["disc_base_width"])
    elif detector == "destseg":
        model = DestsegNet(zero_init_last=False)  # every initial value is replaced by the weights below
    else:
        raise IntegrityError(cfg_path, f"unknown detector '{detector}'", hint)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise IntegrityError(weights, f"weights do not fit the network ({exc})", hint) from exc
    return TrainedDetector(model.to(device), config, device)
