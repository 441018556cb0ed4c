"""Diffusion backbones: loading real or tiny diffusers pipelines through one code path.

The package's names are imported when first used, so that planning can read which files a model
has (``anogen.diffusion.model_files``) without importing torch.
"""

import importlib

_EXPORTS = {
    "Backbone": "anogen.diffusion.backbone",
    "load_backbone": "anogen.diffusion.backbone",
    "load_embedding": "anogen.diffusion.textual_inversion",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
