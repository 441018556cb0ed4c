"""Diffusion backbones: loading real or tiny diffusers pipelines through one code path."""

from anogen.diffusion.backbone import Backbone, load_backbone

__all__ = ["Backbone", "load_backbone"]
