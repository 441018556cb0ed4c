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

from anogen import provenance
from anogen.diffusion.model_files import component_class, local_model_root, missing_model_files, model_files_record
from anogen.diffusion.published import FAMILY_OF_PIPELINE, SUBFOLDERS
from anogen.diffusion.schedule import FILE_SOURCE, resolve_schedule, schedule_record
from anogen.errors import ConfigError


def read_model_index(model: str, revision: str | None = None) -> dict:
    """``model_index.json`` of a local folder or of a hub id (from the cache when offline)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(model, revision=revision))
    except Exception as exc:
        where = "local folder" if Path(model).exists() else "hub id (offline runs need it in the HF cache)"
        raise ConfigError("diffusion.model", f"cannot read model_index.json of {model!r} as a {where}: {exc}") from exc


def family_of_index(model: str, index: dict) -> str:
    cls = index.get("_class_name")
    if cls not in FAMILY_OF_PIPELINE:
        raise ConfigError(
            "diffusion.model",
            f"{model!r} is a {cls}; supported pipelines are {sorted(FAMILY_OF_PIPELINE)}",
        )
    return FAMILY_OF_PIPELINE[cls]


def detect_family(model: str, revision: str | None = None) -> str:
    return family_of_index(model, read_model_index(model, revision))


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
    # where scheduler_config came from (anogen.diffusion.schedule.resolve_schedule)
    scheduler_source: str = FILE_SOURCE
    # revision, variant, where the files were found and each file read (for manifests: ``load_backbone``)
    files_record: dict | None = None

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

    def schedule_record(self) -> dict:
        """The noise schedule's values and their source, for manifests."""
        return schedule_record(self.scheduler_config, self.scheduler_source)

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
        vocab = self.tokenizer.get_vocab()
        if token in vocab:
            raise ConfigError(
                "embedding.placeholder_token",
                f"{token!r} is already a token of {self.model}; choose a new string",
            )
        used_ids = set(vocab.values())
        self.tokenizer.add_tokens([token])
        token_id = int(self.tokenizer.convert_tokens_to_ids(token))
        # A vocabulary with a repeated line has fewer entries than ids, so the new token can be
        # given an id a real word already has; a case-folding tokenizer can map the token onto a
        # word. Either way training would overwrite that word's row.
        if token_id in used_ids or self.tokenizer.encode(token, add_special_tokens=False) != [token_id]:
            raise ConfigError(
                "embedding.placeholder_token",
                f"{token!r} tokenizes to an id {self.model}'s vocabulary already uses "
                f"({self.tokenizer.encode(token, add_special_tokens=False)}); choose a new string",
            )
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


def load_backbone(
    model: str,
    revision: str | None = None,
    device: str = "cpu",
    *,
    variant: str | None = None,
    scheduler: str = "trained",  # repeated on purpose: direct calls load as the workflow does by default
) -> Backbone:
    """Load every component of ``model`` with the class its ``model_index.json`` names, frozen, in float32.

    ``model`` is a local folder or a hub id (read from the HF cache when ``HF_HUB_OFFLINE=1`` or
    without network); ``variant`` picks weight files such as ``*.fp16.safetensors`` (upcast to
    float32: autocast decides the compute precision); ``scheduler`` is ``diffusion.scheduler``.
    """
    # 1. the pipeline's index: its family and the class of every component
    index = read_model_index(model, revision)
    family = family_of_index(model, index)
    sub = SUBFOLDERS[family]
    # 2. every file a component needs, checked first so that one message names all that is missing
    root = local_model_root(model, revision)
    if root is not None:
        missing = missing_model_files(root, index, sub, variant)
        if missing:
            raise ConfigError("diffusion.model", f"{model!r} ({root}) lacks " + "; ".join(missing))
    # 3. the components, in float32 whatever their files or config say
    kw: dict[str, Any] = {"revision": revision} if revision else {}
    weights = {**kw, "variant": variant} if variant else kw
    parts = {}
    for name in ("text_encoder", "vae", "unet"):
        cls = component_class(index, sub[name])
        parts[name] = cls.from_pretrained(model, subfolder=sub[name], **weights, **_float32(cls))
    tokenizer = component_class(index, sub["tokenizer"]).from_pretrained(model, subfolder=sub["tokenizer"], **kw)
    # 4. the noise schedule: the one the family was trained with, unless the file is asked for
    scheduler_config, source = read_schedule(model, family, scheduler, revision)
    backbone = Backbone(
        family, model, parts["vae"], parts["text_encoder"], tokenizer, parts["unet"], scheduler_config, "cpu", source
    )
    # what was read, identified as the plan identifies it (the model's part of the content keys)
    found = model_files_record(model, revision, variant) or {"source": None, "files": None}
    backbone.files_record = {"revision": revision, "variant": variant, **found}

    if root is not None and provenance.is_random_model(str(root)):  # a folder, or a hub id's snapshot
        provenance.record(provenance.RANDOM_MODEL)
    return backbone.freeze().to(device)


def read_schedule(model: str, family: str, scheduler: str, revision: str | None = None) -> tuple[dict, str]:
    """The scheduler config ``model`` is run with under ``diffusion.scheduler`` = ``scheduler``, and its source."""
    from diffusers import DDIMScheduler

    kw = {"revision": revision} if revision else {}
    file_config = dict(DDIMScheduler.load_config(model, subfolder=SUBFOLDERS[family]["scheduler"], **kw))
    return resolve_schedule(family, file_config, scheduler)


def _float32(cls) -> dict:
    """The keyword that pins float32 weights: diffusers says ``torch_dtype``; transformers >= 4.56 ``dtype``."""
    if cls.__module__.startswith("diffusers.models") or not _transformers_takes_dtype():
        return {"torch_dtype": torch.float32}
    return {"dtype": torch.float32}


def _transformers_takes_dtype() -> bool:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return (major, minor) >= (4, 56)
