"""Stage 1: learn one anomaly embedding per (category, defect) with a mask-weighted loss."""

from anogen.embedding.train import (
    EmbeddingTrainer,
    GroupedEmbeddingTrainer,
    effective_learning_rate,
    learn_embedding,
    masked_noise_loss,
)

__all__ = [
    "EmbeddingTrainer",
    "GroupedEmbeddingTrainer",
    "effective_learning_rate",
    "learn_embedding",
    "masked_noise_loss",
]
