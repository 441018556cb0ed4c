"""Component configs for the two supported backbone families, at full and tiny size.

Full size reproduces the published architectures (so benchmarks measure the real cost
with random weights, no download):
- ``ldm``: CompVis ldm-text2im-large-256 (LDMBert 1280-d x 32 layers, UNet 320-640-1280-1280
  with cross-attention width 1280, KL autoencoder f8, 256 px -> 32x32x4 latents).
- ``sd``: Stable Diffusion 1.x (CLIP ViT-L/14 text encoder 768-d x 12 layers, UNet
  320-640-1280-1280, KL autoencoder f8, 512 px -> 64x64x4 latents).
Tiny size keeps every structural feature the code relies on (f8 autoencoder, cross
attention, classifier-free guidance path) with a few thousand parameters per block.
"""

from __future__ import annotations

FAMILIES = ("ldm", "sd")

_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def scheduler_config() -> dict:
    return dict(_SCHEDULER)


def vae_config(size: str, resolution: int) -> dict:
    widths = (128, 256, 512, 512) if size == "full" else (8, 16, 16, 16)
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=list(widths),
        layers_per_block=2 if size == "full" else 1,
        norm_num_groups=32 if size == "full" else 8,
        sample_size=resolution,
    )


def unet_config(size: str, latent_size: int, cross_attention_dim: int) -> dict:
    if size == "full":
        return dict(
            sample_size=latent_size,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=[320, 640, 1280, 1280],
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    return dict(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=[32, 64],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def text_config(family: str, size: str, vocab_size: int) -> dict:
    if family == "ldm":
        if size == "full":
            return dict(
                vocab_size=vocab_size,
                max_position_embeddings=77,
                encoder_layers=32,
                encoder_ffn_dim=5120,
                encoder_attention_heads=8,
                head_dim=64,
                d_model=1280,
            )
        return dict(
            vocab_size=vocab_size,
            max_position_embeddings=77,
            encoder_layers=2,
            encoder_ffn_dim=64,
            encoder_attention_heads=2,
            head_dim=16,
            d_model=32,
        )
    if size == "full":
        return dict(
            vocab_size=vocab_size,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=32,
    )


def native_resolution(family: str) -> int:
    return 256 if family == "ldm" else 512
