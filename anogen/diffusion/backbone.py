"""Load a frozen latent diffusion backbone: real weights and tiny models through one path.

Two families are supported, told apart by the pipeline class in ``model_index.json``:
- ``ldm``: ``LDMTextToImagePipeline`` (CompVis ldm-text2im-large-256: LDMBert + BertTokenizer,
  components in ``vqvae/``, ``bert/``, ``tokenizer/``, ``unet/``, ``scheduler/``);
- ``sd``: ``StableDiffusionPipeline`` 1.x (CLIP text encoder + CLIPTokenizer, components in
  ``vae/``, ``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``).
``model`` is a hub id or a local folder; every component is read with ``from_pretrained``,
which honours ``HF_HUB_OFFLINE`` and the local cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from anogen.errors import ConfigError

_FAMILY_OF_PIPELINE = {
    "LDMTextToImagePipeline": "ldm",
    "StableDiffusionPipeline": "sd",
}
_SUBFOLDERS = {
    "ldm": {"vae": "vqvae", "text_encoder": "bert", "tokenizer": "tokenizer", "unet": "unet", "scheduler": "scheduler"},
    "sd": {
        "vae": "vae",
        "text_encoder": "text_encoder",
        "tokenizer": "tokenizer",
        "unet": "unet",
        "scheduler": "scheduler",
    },
}


def detect_family(model: str, revision: str | None = None) -> str:
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(model, revision=revision)
    except Exception as exc:
        where = "local folder" if Path(model).exists() else "hub id (offline runs need it in the HF cache)"
        raise ConfigError("diffusion.model", f"cannot read model_index.json of {model!r} as a {where}: {exc}") from exc
    cls = index.get("_class_name")
    if cls not in _FAMILY_OF_PIPELINE:
        raise ConfigError(
            "diffusion.model",
            f"{model!r} is a {cls}; supported pipelines are {sorted(_FAMILY_OF_PIPELINE)}",
        )
    return _FAMILY_OF_PIPELINE[cls]


@dataclasses.dataclass
class Backbone:
    """The frozen parts of a latent diffusion model, with the few operations AnoGen needs."""

    family: str
    model: str
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler_config: dict
    device: str = "cpu"

    # ------------------------------------------------------------------ geometry
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @property
    def max_length(self) -> int:
        return min(int(self.tokenizer.model_max_length), 77)

    @property
    def embedding_dim(self) -> int:
        return int(self.text_encoder.get_input_embeddings().weight.shape[1])

    # ------------------------------------------------------------------ schedulers
    def training_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def ddim_scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    # ------------------------------------------------------------------ text
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(self.device))[0]

    def input_embeddings(self) -> torch.nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    def add_placeholder_token(self, token: str, init_word: str | None = None) -> int:
        """Add ``token`` to the tokenizer, give it an embedding row and return its id.

        The row starts as the mean of the rows of ``init_word``'s tokens (one token for a
        real model's "defect"; a tiny tokenizer may split it).
        """
        if token in self.tokenizer.get_vocab():
            raise ConfigError(
                "embedding.placeholder_token",
                f"{token!r} is already a token of {self.model}; choose a new string",
            )
        self.tokenizer.add_tokens([token])
        token_id = int(self.tokenizer.convert_tokens_to_ids(token))
        emb = self.input_embeddings()
        if token_id >= emb.num_embeddings:
            self.text_encoder.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            emb = self.input_embeddings()
        if init_word is not None:
            init_ids = self.tokenizer.encode(init_word, add_special_tokens=False)
            if not init_ids:
                raise ConfigError("embedding.init_word", f"{init_word!r} encodes to no token")
            with torch.no_grad():
                emb.weight[token_id] = emb.weight[init_ids].mean(dim=0)
        return token_id

    def set_token_embedding(self, token: str, vector: torch.Tensor) -> int:
        """Add ``token`` (if new) and set its row to ``vector`` (shape [dim] or [1, dim])."""
        vector = vector.reshape(-1)
        if vector.numel() != self.embedding_dim:
            raise ValueError(
                f"embedding for {token!r} has {vector.numel()} values; {self.model} expects {self.embedding_dim}"
            )
        if token in self.tokenizer.get_vocab():
            token_id = int(self.tokenizer.convert_tokens_to_ids(token))
        else:
            token_id = self.add_placeholder_token(token)
        with torch.no_grad():
            self.input_embeddings().weight[token_id] = vector.to(self.input_embeddings().weight)
        return token_id

    # ------------------------------------------------------------------ images
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1], NCHW -> scaled latents (a sample of the KL posterior)."""
        out = self.vae.encode(pixels.to(self.device))
        if hasattr(out, "latent_dist"):
            latents = out.latent_dist.sample(generator=generator)
        else:  # VQModel
            latents = out.latents
        return latents * self.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1], NCHW float32."""
        image = self.vae.decode(latents / self.scaling_factor).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def freeze(self) -> Backbone:
        for module in (self.vae, self.text_encoder, self.unet):
            module.requires_grad_(False)
            module.eval()
        return self

    def to(self, device: str) -> Backbone:
        self.device = device
        for module in (self.vae, self.text_encoder, self.unet):
            module.to(device)
        return self


def load_backbone(model: str, revision: str | None = None, device: str = "cpu") -> Backbone:
    """Load every component of ``model`` with ``from_pretrained``, frozen, in float32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel, VQModel
    from transformers import AutoTokenizer

    family = detect_family(model, revision)
    sub = _SUBFOLDERS[family]
    kw: dict[str, Any] = {"revision": revision} if revision else {}
    if family == "ldm":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel

        text_encoder = LDMBertModel.from_pretrained(model, subfolder=sub["text_encoder"], **kw)
    else:
        from transformers import CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(model, subfolder=sub["text_encoder"], **kw)
    from diffusers import DiffusionPipeline

    vae_cls_name = DiffusionPipeline.load_config(model, **kw)[sub["vae"]][1]
    vae_cls = VQModel if vae_cls_name == "VQModel" else AutoencoderKL
    vae = vae_cls.from_pretrained(model, subfolder=sub["vae"], **kw)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder=sub["unet"], **kw)
    tokenizer = AutoTokenizer.from_pretrained(model, subfolder=sub["tokenizer"], **kw)
    from diffusers import DDIMScheduler

    scheduler_config = dict(DDIMScheduler.load_config(model, subfolder=sub["scheduler"], **kw))
    backbone = Backbone(family, model, vae, text_encoder, tokenizer, unet, scheduler_config)
    from anogen import provenance

    if provenance.is_random_model(model):
        provenance.record(provenance.RANDOM_MODEL)
    return backbone.freeze().to(device)
