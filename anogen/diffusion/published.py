"""The file layouts of the published checkpoints, written for any weights of the same family.

The real repositories were saved in 2022 by early diffusers / transformers releases, and their
files differ from what today's ``save_pretrained`` writes: pickled ``.bin`` weights, the VAE's
attention under its old names (``query``/``key``/``value``/``proj_attn``), slow-tokenizer files
only (no ``tokenizer.json``), config files with the keys of their time (no ``scaling_factor``,
``torch_dtype`` rather than ``dtype``), and for the LDM a scheduler file that names its schedule
in CompVis' words (``linear``), which diffusers reads differently (see ``anogen.diffusion.schedule``).

:func:`save_published_layout` writes a pipeline's components in exactly that layout. The demo's
tiny model is saved with it, so the default run and the tests load through the path users with
the real weights take; ``tests/hub_fixtures.py`` also puts such a folder into a hub cache.

Sources (read 2026-12): the file listings and the ``model_index.json``, ``scheduler_config.json``,
``tokenizer_config.json`` and component ``config.json`` files of CompVis/ldm-text2im-large-256 and
of the Stable Diffusion 1.x repositories (CompVis/stable-diffusion-v1-4, its v1-5 successor).
"""

from __future__ import annotations

import json
from pathlib import Path

# model_index.json as published: pipeline class, and per component (library, class).
MODEL_INDEX = {
    "ldm": {
        "_class_name": "LDMTextToImagePipeline",
        "_diffusers_version": "0.0.4",
        "bert": ["latent_diffusion", "LDMBertModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "tokenizer": ["transformers", "BertTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vqvae": ["diffusers", "AutoencoderKL"],
    },
    "sd": {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.2.2",
        "feature_extractor": ["transformers", "CLIPFeatureExtractor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
}

# scheduler/scheduler_config.json as published. The LDM's says "linear" with no steps_offset and no
# set_alpha_to_one: read by diffusers that is not the schedule the model was trained with.
SCHEDULER_FILE = {
    "ldm": {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.0.4",
        "beta_end": 0.012,
        "beta_schedule": "linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "timestep_values": None,
        "trained_betas": None,
    },
    "sd": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.2.2",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
}

# Config keys the published UNet / VAE files have; a key outside these is written only where its
# value differs from the class default (a tiny model needs its small group norm, say).
_UNET_KEYS = {
    "act_fn",
    "attention_head_dim",
    "block_out_channels",
    "center_input_sample",
    "cross_attention_dim",
    "down_block_types",
    "downsample_padding",
    "flip_sin_to_cos",
    "freq_shift",
    "in_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "norm_eps",
    "norm_num_groups",
    "out_channels",
    "sample_size",
    "up_block_types",
}
_VAE_KEYS = {
    "act_fn",
    "block_out_channels",
    "down_block_types",
    "in_channels",
    "latent_channels",
    "layers_per_block",
    "out_channels",
    "sample_size",
    "up_block_types",
}

# Per family: component -> subfolder as published.
SUBFOLDERS = {
    "ldm": {"vae": "vqvae", "text_encoder": "bert", "tokenizer": "tokenizer", "unet": "unet", "scheduler": "scheduler"},
    "sd": {
        "vae": "vae",
        "text_encoder": "text_encoder",
        "tokenizer": "tokenizer",
        "unet": "unet",
        "scheduler": "scheduler",
    },
}
FAMILY_OF_PIPELINE = {MODEL_INDEX[f]["_class_name"]: f for f in MODEL_INDEX}

# Files a slow tokenizer of each class reads (what the published tokenizer folders hold).
TOKENIZER_FILES = {
    "BertTokenizer": ("vocab.txt",),
    "CLIPTokenizer": ("vocab.json", "merges.txt"),
}

# The tokenizer_config.json entries as published (the vocabulary files are the model's own).
_TOKENIZER_CONFIG = {
    "ldm": {
        "cls_token": "[CLS]",
        "do_basic_tokenize": True,
        "do_lower_case": True,
        "mask_token": "[MASK]",
        "model_max_length": 512,
        "name_or_path": "bert-base-uncased",
        "never_split": None,
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "special_tokens_map_file": None,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
        "unk_token": "[UNK]",
    },
    "sd": {
        "add_prefix_space": False,
        "bos_token": "<|startoftext|>",
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": "<|endoftext|>",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    },
}
_SPECIAL_TOKENS = {
    "ldm": {
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    },
    "sd": {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    },
}


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _diffusers_config(model, published_keys: set[str], version: str) -> dict:
    """The published keys of ``model``'s config, plus any other key that differs from the default."""
    import inspect

    defaults = {
        name: p.default for name, p in inspect.signature(type(model).__init__).parameters.items() if name != "self"
    }
    config = {}
    for name, value in dict(model.config).items():
        if name.startswith("_"):
            continue
        value = list(value) if isinstance(value, tuple) else value
        default = defaults.get(name, inspect.Parameter.empty)
        default = list(default) if isinstance(default, tuple) else default
        if name in published_keys or value != default:
            config[name] = value
    return {"_class_name": type(model).__name__, "_diffusers_version": version, **config}


def _old_attention_names(state_dict: dict) -> dict:
    """The VAE's mid-block attention under the names of 2022 (diffusers renames them on load)."""
    renamed = {}
    for name, tensor in state_dict.items():
        if ".attentions." in name:
            for new, old in (
                (".to_q.", ".query."),
                (".to_k.", ".key."),
                (".to_v.", ".value."),
                (".to_out.0.", ".proj_attn."),
            ):
                name = name.replace(new, old)
        renamed[name] = tensor
    return renamed


def _text_encoder_config(text_encoder) -> dict:
    """The text encoder's config.json as transformers 4.2x wrote it (``torch_dtype``, float32)."""
    config = text_encoder.config.to_dict()
    config.pop("dtype", None)
    config.update(torch_dtype="float32", architectures=[type(text_encoder).__name__])
    config.setdefault("transformers_version", "4.21.0")
    return config


def save_published_layout(family: str, parts: dict, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Write ``parts`` (vae, text_encoder, unet; ``anogen.diffusion.tiny.build_components``) to
    ``out_dir`` in the published layout of ``family``, with the slow-tokenizer vocabulary files of
    ``tokenizer_dir``. The scheduler file is the published one, whatever ``parts`` holds."""
    import torch  # here, not above: planning reads this module's layout tables without torch

    out_dir = Path(out_dir)
    sub = SUBFOLDERS[family]
    version = MODEL_INDEX[family]["_diffusers_version"]
    _write_json(out_dir / "model_index.json", MODEL_INDEX[family])
    _write_json(out_dir / sub["scheduler"] / "scheduler_config.json", SCHEDULER_FILE[family])
    # the UNet and the VAE: diffusers configs of their time, pickled weights
    for part, keys in (("unet", _UNET_KEYS), ("vae", _VAE_KEYS)):
        model = parts[part]
        folder = out_dir / sub[part]
        _write_json(folder / "config.json", _diffusers_config(model, keys, version))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(_old_attention_names(state) if part == "vae" else state, folder / "diffusion_pytorch_model.bin")
    # the text encoder: a transformers model, pytorch_model.bin
    folder = out_dir / sub["text_encoder"]
    _write_json(folder / "config.json", _text_encoder_config(parts["text_encoder"]))
    state = {k: v.contiguous() for k, v in parts["text_encoder"].state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    # the tokenizer: slow-tokenizer files only, as published
    folder = out_dir / sub["tokenizer"]
    tokenizer_class = MODEL_INDEX[family]["tokenizer"][1]
    for name in TOKENIZER_FILES[tokenizer_class]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((Path(tokenizer_dir) / name).read_bytes())
    _write_json(folder / "tokenizer_config.json", _TOKENIZER_CONFIG[family])
    _write_json(folder / "special_tokens_map.json", _SPECIAL_TOKENS[family])
    if family == "sd":
        # Listed in model_index.json; never loaded here (no safety checker, no image processor).
        _write_json(
            out_dir / "feature_extractor" / "preprocessor_config.json",
            {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True, "size": 224},
        )
    return out_dir
