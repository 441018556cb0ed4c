"""Stage 1: learn one anomaly embedding per (category, defect) with a mask-weighted loss."""

from anogen.embedding.grouped import GroupedEmbeddingTrainer
from anogen.embedding.train import learn_embedding
from anogen.embedding.trainer import EmbeddingTrainer, effective_learning_rate, masked_noise_loss

__all__ = [
    "EmbeddingTrainer",
    "GroupedEmbeddingTrainer",
    "effective_learning_rate",
    "learn_embedding",
    "masked_noise_loss",
]
