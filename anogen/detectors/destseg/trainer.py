"""DeSTSeg training (two phases), teacher weights and scoring (the losses: ``loss.DestsegLoss``).

Phase 1 (``step < student_steps``): only the student learns, SGD (lr ``student_lr``,
momentum, weight decay). Phase 2: student frozen (eval mode), the segmentation network
learns, SGD with lr ``seg_lr_residual`` for its residual part and ``seg_lr_head`` for the
ASPP head.

Image score: the mean of the ``top_k`` (100) largest values of the anomaly map after
bilinear upsampling to the image size.

Teacher: ImageNet ResNet18 weights from ``teacher_weights`` (``.pth`` read with
``weights_only=True`` or ``.safetensors``; torchvision or timm names, a timm training
checkpoint or a whole DeSTSeg checkpoint: ``network.teacher_state_layout``, recorded as
``teacher_layout`` in the manifest), else from the torch hub cache
(``torch.hub.get_dir()/checkpoints/resnet18-*.pth``) if present, else random
initialisation with a loud warning; which one is recorded in the detector's manifest.
``detectors.destseg.teacher`` says which ImageNet weights are meant (``timm_a1``: timm's
``resnet18.a1_in1k``, a file required, torchvision's refused: ``check_teacher_file``); the
manifest records it as ``teacher_source`` beside the file's sha256 and layout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anogen import provenance
from anogen.data.fingerprint import file_fingerprint, file_record
from anogen.detectors.common import backward_step, count_parameters
from anogen.detectors.destseg.loss import DestsegLoss
from anogen.detectors.destseg.network import DestsegNet, teacher_state_layout
from anogen.devices import autocast, grad_scaler
from anogen.errors import ConfigError, DataError
from anogen.io import sha256_file

log = logging.getLogger(__name__)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(path, f"cannot read ResNet18 weights ({exc})") from exc
    if not isinstance(state, dict):
        raise DataError(path, "ResNet18 weights file does not hold a state dict")
    return state


def load_teacher_weights(
    teacher_weights: str | Path | None, teacher: str | None = None
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Return ``(state_dict or None, info)``; info["teacher"] is "imagenet" or "random-init".

    ``teacher``: ``detectors.destseg.teacher`` (checked by ``check_teacher_file``; None = any
    ResNet18 file), recorded as ``teacher_source``."""
    if teacher_weights:
        path = Path(teacher_weights)
        if not path.is_file():
            raise ConfigError("detectors.destseg.teacher_weights", f"file {path} does not exist")
        origin = "config"
    else:
        provenance.check_teacher_file(teacher, None, None)
        path = provenance.find_hub_resnet18()
        origin = "torch-hub-cache"
    if path is None:
        log.warning(
            "!!! DeSTSeg teacher: no ImageNet ResNet18 weights (detectors.destseg.teacher_weights "
            "is null and %s/checkpoints has no resnet18-*.pth). The teacher is RANDOMLY "
            "INITIALISED; results are not comparable with the paper. This is recorded as "
            "teacher: random-init. !!!",
            torch.hub.get_dir(),
        )
        provenance.record(provenance.RANDOM_TEACHER)
        return None, {
            "teacher": "random-init",
            "teacher_source": teacher,
            "teacher_layout": None,
            "teacher_weights": None,
        }
    sha256 = sha256_file(path)
    provenance.check_teacher_file(teacher, path, sha256)
    try:
        layout, state = teacher_state_layout(_read_state_dict(path))
    except KeyError as exc:
        raise DataError(path, f"not ResNet18 weights ({exc})") from exc
    _, size, mtime_ns = file_record(path.parent, path)
    # fingerprint: the plan's identity of the file (a DeSTSeg detector's inputs["teacher"])
    file = {"path": str(path), "origin": origin, "sha256": sha256, "bytes": size, "mtime_ns": mtime_ns}
    return state, {
        "teacher": "imagenet",
        "teacher_source": teacher,
        "teacher_layout": layout,
        "teacher_weights": {**file, "fingerprint": file_fingerprint(path)},
    }


def destseg_scores(p_anomaly: torch.Tensor, top_k: int) -> torch.Tensor:
    """Mean of the ``top_k`` largest values of each N,1,H,W map."""
    flat = p_anomaly.float().flatten(1)
    k = min(int(top_k), flat.shape[1])
    return flat.topk(k, dim=1).values.mean(dim=1)


class DestsegTrainer:
    """``cfg``: the config's ``destseg`` section (every key the schema fills; the spec's holds no
    ``teacher_weights`` path, ``train.build_trainer`` adds the runtime one); ``tau``: the
    resolved tau of a non-baseline variant, None for a baseline."""

    name = "destseg"
    log_columns = ("phase", "loss", "cosine", "focal", "l1", "weak_dropped", "lr")

    def __init__(
        self,
        cfg: dict[str, Any],
        *,
        seed: int,
        tau: float | None,
        device: str,
        n_train: int,
        mixed_precision: str,
    ):
        self.cfg = c = dict(cfg)
        self.device = device
        self.mixed_precision = mixed_precision
        self.loss = DestsegLoss(c, tau)
        self.tau = self.loss.tau
        torch.manual_seed(seed)
        self.model = DestsegNet(zero_init_last=bool(c["zero_init_last"]))
        self._load_teacher(c["teacher_weights"], c["teacher"])
        self.model.to(device)
        self.student_opt = torch.optim.SGD(
            self.model.student.parameters(),
            lr=float(c["student_lr"]),
            momentum=float(c["momentum"]),
            weight_decay=float(c["weight_decay"]),
        )
        self.seg_opt = torch.optim.SGD(
            [
                {"params": self.model.segmentation.res.parameters(), "lr": float(c["seg_lr_residual"])},
                {"params": self.model.segmentation.head.parameters(), "lr": float(c["seg_lr_head"])},
            ],
            lr=float(c["seg_lr_head"]),
            momentum=float(c["momentum"]),
            weight_decay=float(c["weight_decay"]),
        )
        self.batch_size = int(c["batch_size"])
        self.total_steps = int(c["steps"])
        self.student_steps = int(c["student_steps"])
        self.scaler = grad_scaler(mixed_precision, device)

    def _load_teacher(self, teacher_weights: str | None, teacher: str) -> None:
        state, self.teacher_info = load_teacher_weights(teacher_weights, teacher)
        if state is None:
            return
        try:
            self.model.teacher.load_torchvision_state(state)
        except (KeyError, RuntimeError) as exc:
            raise DataError(self.teacher_info["teacher_weights"]["path"], f"not ResNet18 weights ({exc})") from exc

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"student": self.student_opt, "segmentation": self.seg_opt}

    def lr_at(self, step: int) -> float:
        if step < self.student_steps:
            return float(self.cfg["student_lr"])
        return float(self.cfg["seg_lr_residual"])

    def parameter_counts(self) -> dict[str, int]:
        m = self.model
        return {
            "teacher_frozen": count_parameters(m.teacher),
            "student": count_parameters(m.student),
            "segmentation": count_parameters(m.segmentation),
            "trainable": count_parameters(m, trainable_only=True),
            "total": count_parameters(m),
        }

    def export_config(self) -> dict[str, Any]:
        return {
            "top_k": int(self.cfg["top_k"]),
            "teacher": self.teacher_info["teacher"],
            "mixed_precision": self.mixed_precision,
        }

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor | float]:
        """One optimiser step of the phase ``step`` is in; losses as 0-d device tensors (no host
        sync, see ``DraemTrainer.train_step``), phase and learning rate as numbers."""
        if step < self.student_steps:
            return self._student_step(batch, step)
        return self._segmentation_step(batch, step)

    def _student_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor | float]:
        dev, m = self.device, self.model
        image = batch["image"].to(dev, non_blocking=True)
        clean = batch["clean"].to(dev, non_blocking=True)
        m.student.train()
        m.segmentation.eval()
        with autocast(self.mixed_precision, dev):
            t = m.teacher_features(clean)
            s = m.student_features(image, [f.shape[2:] for f in t])
            cos = self.loss.student(m.distance_maps(t, s))
        self.student_opt.zero_grad(set_to_none=True)
        backward_step(cos, self.student_opt, self.scaler)
        nan = float("nan")
        cos = cos.detach()
        return {
            "phase": 1,
            "loss": cos,
            "cosine": cos,
            "focal": nan,
            "l1": nan,
            "weak_dropped": nan,
            "lr": self.lr_at(step),
        }

    def _segmentation_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor | float]:
        dev, m = self.device, self.model
        image = batch["image"].to(dev, non_blocking=True)
        mask = batch["mask"].to(dev, non_blocking=True)
        weak = batch["weak"].to(dev)
        m.student.eval()
        m.segmentation.train()
        with autocast(self.mixed_precision, dev):
            with torch.no_grad():
                t = m.teacher_features(image)
                s = [f.detach() for f in m.student_features(image, [f.shape[2:] for f in t])]
            logit = m.segment(t, s)
        loss, terms = self.loss(logit.float(), mask, weak)
        self.seg_opt.zero_grad(set_to_none=True)
        backward_step(loss, self.seg_opt, self.scaler)
        return {
            "phase": 2,
            "loss": loss.detach(),
            "cosine": float("nan"),
            "focal": terms["focal"].detach(),
            "l1": terms["l1"].detach(),
            "weak_dropped": (terms["weight"] == 0).float().mean(),
            "lr": self.lr_at(step),
        }


@torch.no_grad()
def destseg_predict(model: DestsegNet, images: torch.Tensor, top_k: int, device: str, mixed_precision: str):
    model.eval()
    with autocast(mixed_precision, device):
        logit = model(images)
    p = torch.sigmoid(logit.float())
    p = F.interpolate(p, size=images.shape[2:], mode="bilinear", align_corners=False)
    scores = destseg_scores(p, top_k)
    return scores.cpu().numpy().astype(np.float64), p[:, 0].cpu().numpy().astype(np.float32)
