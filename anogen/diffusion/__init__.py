"""Diffusion backbones: loading real or tiny diffusers pipelines through one code path."""

from anogen.diffusion.backbone import Backbone, load_backbone
from anogen.diffusion.textual_inversion import load_embedding

__all__ = ["Backbone", "load_backbone", "load_embedding"]
