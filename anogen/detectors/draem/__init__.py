"""DRAEM: reconstructive + discriminative sub-networks (network.py), training step (model.py)."""

from anogen.detectors.draem.model import DraemTrainer, draem_scores
from anogen.detectors.draem.network import DraemNet

__all__ = ["DraemNet", "DraemTrainer", "draem_scores"]
