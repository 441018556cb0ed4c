"""DeSTSeg: frozen ResNet18 teacher, denoising student, segmentation network (network.py), losses (loss.py), training (trainer.py)."""

from anogen.detectors.destseg.loss import DestsegLoss
from anogen.detectors.destseg.network import DestsegNet
from anogen.detectors.destseg.trainer import DestsegTrainer, destseg_scores, load_teacher_weights

__all__ = ["DestsegLoss", "DestsegNet", "DestsegTrainer", "destseg_scores", "load_teacher_weights"]
