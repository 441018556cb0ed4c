"""``anogen quality``: IS, KID and IC-LPIPS of any folder of generated images with the workflow's
settings, written with the columns of ``results/generation_quality.csv`` (``anogen.quality``)."""

from __future__ import annotations

from anogen import options
from anogen.config import deep_update
from anogen.quality.run import folder_quality
from anogen.quality.table import write_csv

SHOWN = ("is_mean", "is_std", "ic_lpips", "kid_mean", "kid_std", "crop_is_mean", "crop_ic_lpips", "crop_kid_mean")


def run(args) -> int:
    # No config file: the schema's defaults (the workflow's settings), not the demo's config.
    raw = options.snakemake_config(args.configfile or [], args.config or [], no_file={"data_root": "."})
    config = options.validated_run_config(deep_update(raw, options.parse_set_items(args.set)))
    quality = config["quality"]
    weights = {
        "inception": args.inception_weights or quality["inception_weights"],
        "lpips": args.lpips_weights or quality["lpips_weights"],
    }
    device = args.device or _default_device()
    masks = {"generated": args.generated_masks, "real": args.real_masks, "support": args.support_masks}
    row = folder_quality(
        generated=args.generated, real=args.real, support=args.support, masks=masks,
        quality=quality, resize=config["resize"], weights=weights, device=device,
    )  # fmt: skip
    write_csv([row], args.out)
    print(
        ", ".join(f"{k}={row[k]}" for k in SHOWN)
        + f"\nwrote {args.out}"
        + (f"\nNOTE: {row['note']}" if row["note"] else "")
    )
    return 0


def _default_device() -> str:
    import torch  # only when no --device is given: the command's parser stays torch-free

    return "cuda" if torch.cuda.is_available() else "cpu"
