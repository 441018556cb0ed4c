"""Effect of the weak-loss threshold tau: DRAEM (variant 'anogen') trained with tau 0.9 and
tau 1.0 (plain box supervision) from the same seed and budget, pixel AU-PR of both.

Reads an MVTec-AD-layout category (<data-root>/<category>/train/good, test/<defect>,
ground_truth/<defect>/<stem>_mask.png) and stage-2 generation manifests (globs, e.g. the
demo's results/generated/<category>/*/*/manifest.json). Prints one line per tau with pixel
AU-PR, pixel AU-ROC and image AU-ROC (anogen.evaluation, exact), and the training time.

Example (the demo's outputs):
  python bench/bench_tau.py --data-root resources/demo_mvtec --category <cat> \
      --generated-manifests 'results/generated/<cat>/*/*/manifest.json' --epochs 20 \
      --image-size 128 --recon-width 32 --disc-width 16
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True, type=Path)
    ap.add_argument("--category", required=True)
    ap.add_argument("--generated-manifests", nargs="+", required=True, help="globs of generation manifest.json files")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.9, 1.0])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=700)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--schedule", default="original", choices=["original", "anogen"])
    ap.add_argument("--recon-width", type=int, default=128)
    ap.add_argument("--disc-width", type=int, default=64)
    ap.add_argument("--mix-prob", type=float, default=0.5)
    ap.add_argument("--no-weak-on-synthetic", action="store_true")
    ap.add_argument("--texture-source", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=None, help="where the models go (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from anogen.data.mvtec import scan_category
    from anogen.detectors import load_trained_detector, train_detector
    from anogen.evaluation.evaluate import evaluate_detector

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device

    manifests = sorted({Path(p) for g in args.generated_manifests for p in glob.glob(g)})
    if not manifests:
        raise SystemExit(f"no generation manifests match {args.generated_manifests}")
    index = scan_category(args.data_root, args.category)
    train, test = index.train_good, index.test
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_tau_"))
    n_anomalous = sum(item.defect != "good" for item in test)
    print(f"{args.category}: {len(train)} train, {len(test)} test images "
          f"({n_anomalous} anomalous), {len(manifests)} generation manifests; models in {out}")

    results = []
    for tau in args.taus:
        spec = {
            "detector": "draem", "variant": "anogen", "image_size": args.image_size,
            "seed": args.seed, "tau": tau, "mix_prob": args.mix_prob,
            "weak_on_synthetic": not args.no_weak_on_synthetic,
            "texture_source": args.texture_source,
            "draem": {
                "epochs": args.epochs, "batch_size": args.batch_size,
                "learning_rate": args.learning_rate, "schedule": args.schedule,
                "recon_base_width": args.recon_width, "disc_base_width": args.disc_width,
                "ssim_weight": 1.0, "focal_gamma": 2.0, "score_pool": 21,
            },
        }
        model_dir = out / f"tau_{tau:g}"
        t0 = time.perf_counter()
        train_detector(
            detector="draem", variant="anogen", spec=spec, train_images=train,
            generated_manifests=manifests, out_dir=model_dir, key=f"tau{tau:g}",
            inputs={}, device=device, log_every=50, category=args.category,
        )
        seconds = time.perf_counter() - t0
        # The same evaluation as the workflow's evaluate_detector (the whole test set here).
        m = evaluate_detector(
            predictor=load_trained_detector(model_dir, device=device), test_items=test,
            data_root=args.data_root, exclude=set(), resolution=args.image_size, fpr_limit=0.3,
            out_dir=model_dir / "evaluation", key=f"tau{tau:g}", inputs={},
            spec={"category": args.category, "detector": "draem", "variant": f"anogen-tau{tau:g}"},
            n_visualizations=0,
        )
        results.append((tau, m["pixel_aupr"], m["pixel_auroc"], m["image_auroc"], seconds))

    print("\n  tau   pixel AU-PR  pixel AU-ROC  image AU-ROC  train s")
    for tau, ap_, auc, iauc, s in results:
        print(f"  {tau:4.2f}  {ap_:11.4f}  {auc:12.4f}  {iauc:12.4f}  {s:7.0f}")


if __name__ == "__main__":
    main()
