"""Tiny randomly initialised diffusers pipelines for offline runs and tests.

No weights can be downloaded here, so the default run builds a small pipeline of the
chosen family from configs, writes its tokenizer files itself, and saves everything in the
layout the real checkpoints are published in (``anogen.diffusion.published``: pickled ``.bin``
weights, slow-tokenizer files, the published scheduler and config files). It is then loaded by
``anogen.diffusion.backbone.load_backbone`` through exactly the same ``from_pretrained`` calls
as real weights, scheduler override included.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from anogen.diffusion import architectures as arch
from anogen.diffusion.published import save_published_layout
from anogen.provenance import RANDOM_MODEL_MARKER

# Words the tokenizers know as whole tokens: every word of the default prompt templates,
# the initialiser word, and a few more. Anything else falls back to characters.
_WORDS = sorted(
    set(
        "a an the of my one photo rendering cropped clean dirty dark cool close-up close up "
        "bright good rendition nice small weird large defect defects anomaly scratch hole "
        "crack stain damage broken surface texture object".replace("-", " ").split()
    )
)
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def _bert_vocab() -> list[str]:
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    # Each token once ("a" is a character and a word): a repeated line leaves an id that two
    # lines share, and a token added later would be given an id a word already has.
    return list(dict.fromkeys(_BERT_SPECIALS + chars + ["##" + c for c in chars if c.isalnum()] + _WORDS))


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table used by CLIP's byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    symbols = list(_bytes_to_unicode().values())
    vocab: list[str] = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    seen = set(vocab)
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            merged = current + nxt
            merge = f"{current} {nxt}"
            if merge not in merges:
                merges.append(merge)
            if merged not in seen:
                vocab.append(merged)
                seen.add(merged)
            current = merged
    vocab += [_CLIP_BOS, _CLIP_EOS]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer_files(family: str, folder: Path) -> int:
    """The tiny vocabulary files of ``family``'s tokenizer in ``folder``; returns the vocabulary size."""
    return _write_bert_tokenizer(folder) if family == "ldm" else _write_clip_tokenizer(folder)


def _write_bert_tokenizer(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bert_vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 77}),
        encoding="utf-8",
    )
    return len(vocab)


def _write_clip_tokenizer(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": _CLIP_BOS,
                "eos_token": _CLIP_EOS,
                "unk_token": _CLIP_EOS,
                "pad_token": _CLIP_EOS,
            }
        ),
        encoding="utf-8",
    )
    return len(vocab)


def build_components(
    family: str, size: str = "tiny", resolution: int | None = None, vocab_size: int | None = None, *, seed: int
) -> dict:
    """Randomly initialised VAE, text encoder, UNet and scheduler of ``family`` at ``size``.

    ``resolution`` None: the family's native one; ``seed`` seeds the weights (torch's global generator).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    if family not in arch.FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; expected one of {arch.FAMILIES}")
    resolution = resolution or arch.native_resolution(family)
    if vocab_size is None:
        vocab_size = (30522 if family == "ldm" else 49408) if size == "full" else 256
    torch.manual_seed(seed)
    if family == "ldm":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

        text_encoder = LDMBertModel(LDMBertConfig(**arch.text_config("ldm", size, vocab_size)))
        width = text_encoder.config.d_model
    else:
        from transformers import CLIPTextConfig, CLIPTextModel

        cfg = arch.text_config("sd", size, vocab_size)
        cfg.update(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg))
        width = text_encoder.config.hidden_size
    vae = AutoencoderKL(**arch.vae_config(size, resolution))
    unet = UNet2DConditionModel(**arch.unet_config(size, resolution // 8, width))
    scheduler = DDIMScheduler(**arch.scheduler_config())
    return {"vae": vae, "text_encoder": text_encoder, "unet": unet, "scheduler": scheduler}


def save_random_model(family: str, parts: dict, tokenizer_dir: Path, out_dir: Path, marker: dict) -> Path:
    """Save random ``parts`` in the published layout of ``family`` to ``out_dir``, atomically.

    The folder is assembled beside ``out_dir`` and renamed; it carries the random-model marker, so
    every result computed from it says so (``anogen.provenance``).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model_dir = save_published_layout(family, parts, tokenizer_dir, tmp / "model")
        (model_dir / RANDOM_MODEL_MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        model_dir.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def build_tiny_model(family: str, out_dir: str | Path, *, seed: int, resolution: int) -> Path:
    """Build a tiny pipeline of ``family`` and save it to ``out_dir`` in the published layout."""
    with tempfile.TemporaryDirectory(prefix="anogen-tokenizer-") as tok_dir:
        n_vocab = write_tokenizer_files(family, Path(tok_dir))
        parts = build_components(family, "tiny", resolution, vocab_size=n_vocab, seed=seed)
        marker = {"family": family, "seed": seed, "resolution": resolution}
        return save_random_model(family, parts, Path(tok_dir), Path(out_dir), marker)
