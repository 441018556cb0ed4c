"""DeSTSeg: frozen ResNet18 teacher, denoising student, segmentation network."""

from anogen.detectors.destseg.model import DestsegTrainer, destseg_scores, load_teacher_weights
from anogen.detectors.destseg.network import DestsegNet

__all__ = ["DestsegNet", "DestsegTrainer", "destseg_scores", "load_teacher_weights"]
