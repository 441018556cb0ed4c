"""DRAEM: reconstructive + discriminative sub-networks (network.py), loss (loss.py), training step (trainer.py)."""

from anogen.detectors.draem.loss import DraemLoss
from anogen.detectors.draem.network import DraemNet
from anogen.detectors.draem.trainer import DraemTrainer, draem_scores

__all__ = ["DraemLoss", "DraemNet", "DraemTrainer", "draem_scores"]
