"""The mutants of the mutation check (``tools/mutants.py`` runs them; ``docs/mutation.md``).

Each mutant is a plausible one-line bug in a module whose formulas decide results: a file, an
original snippet that must occur in it exactly once, its replacement, and the fast tests
(``SUITES``, narrowed by ``focus``) meant to catch it.
"""

from __future__ import annotations

import dataclasses

# The fast tests of each module: test files (relative to the repository root) and a pytest -k
# expression ("" = every test of the files).
SUITES: dict[str, tuple[tuple[str, ...], str]] = {
    "inpaint": (("tests/test_generation_inpaint.py",), ""),
    "embedding": (("tests/test_embedding.py",), "not sigkill"),
    "metrics": (("tests/test_metrics.py",), ""),
    "detectors": (("tests/test_detectors_units.py",), "not parameter_count and not teacher"),
    "keys": (("tests/test_config_keys.py", "tests/test_artifacts.py"), ""),
    "studies": (("tests/test_studies.py",), ""),
}


def pytest_args(suite: str, focus: list[str] | None) -> list[str]:
    """The suite's files and -k expression, narrowed to the tests named by ``focus`` (None: all)."""
    files, base = SUITES[suite]
    parts = [base] if base else []
    if focus:
        parts.append(" or ".join(f"({f})" for f in focus) if len(focus) > 1 else focus[0])
    expr = " and ".join(f"({p})" for p in parts) if len(parts) > 1 else "".join(parts)
    return [*files, *(["-k", expr] if expr else [])]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    suite: str  # a key of SUITES
    focus: str  # pytest -k expression: the tests of the suite meant to catch it (all of them with --full)
    core: bool = True  # CI fails when a core mutant survives


INPAINT = "anogen/generation/inpaint.py"
EMBED = "anogen/embedding/trainer.py"
METRICS = "anogen/evaluation/metrics.py"
SYNTH = "anogen/detectors/synthetic.py"
LOSSES = "anogen/detectors/losses.py"
_AUG_LOOP = "        out = np.ascontiguousarray(TEXTURE_AUGMENTATIONS[int(index)][1](out, rng))\n    return out\n"

MUTANTS: tuple[Mutant, ...] = (
    # stage 2: classifier-free guidance
    Mutant(
        "cfg-swap-halves", INPAINT, "e_u, e_c = eps_pred.chunk(2)", "e_c, e_u = eps_pred.chunk(2)", "inpaint", "guided"
    ),
    Mutant(
        "cfg-on-conditional",
        INPAINT,
        "return e_u + guidance_scale * (e_c - e_u)",
        "return e_c + guidance_scale * (e_c - e_u)",
        "inpaint",
        "guided",
    ),
    Mutant(
        "cfg-context-order",
        INPAINT,
        "torch.cat([_expand(uncond_embeds.to(device), n), cond])",
        "torch.cat([cond, _expand(uncond_embeds.to(device), n)])",
        "inpaint",
        "guided",
    ),
    Mutant(
        "cfg-at-scale-one", INPAINT, "return guidance_scale > 1.0", "return guidance_scale >= 1.0", "inpaint", "guided"
    ),
    # stage 2: latent box mask
    Mutant("box-mask-over-half", INPAINT, "half = (frac >= 0.5)", "half = (frac > 0.5)", "inpaint", "latent_box_mask"),
    Mutant("box-mask-quarter", INPAINT, "half = (frac >= 0.5)", "half = (frac >= 0.25)", "inpaint", "latent_box_mask"),
    Mutant(
        "box-mask-fallback-quarter", INPAINT, "anyo = (frac > 0)", "anyo = (frac >= 0.25)", "inpaint", "latent_box_mask"
    ),
    Mutant(
        "box-mask-no-fallback",
        INPAINT,
        "return torch.where(empty[:, None, None, None], anyo, half)",
        "return half",
        "inpaint",
        "latent_box_mask",
    ),
    Mutant(
        "box-mask-batch-fallback",
        INPAINT,
        "empty = half.flatten(1).sum(1) == 0",
        "empty = (half.sum() == 0).expand(half.shape[0])",
        "inpaint",
        "latent_box_mask",
    ),
    # stage 2: Eq. 7
    Mutant(
        "eq7-swap-blend",
        INPAINT,
        "z = reference * keep + denoised * m",
        "z = reference * m + denoised * keep",
        "inpaint",
        "eq7",
    ),
    Mutant(
        "eq7-reference-level",
        INPAINT,
        "target_t = schedule.timesteps[i] - schedule.ratio",
        "target_t = schedule.timesteps[i]",
        "inpaint",
        "eq7",
    ),
    Mutant(
        "eq7-initial-latent",
        INPAINT,
        "z = schedule.q(z0, schedule.timesteps[0], draws.initial) * keep + draws.initial * m",
        "z = draws.initial",
        "inpaint",
        "eq7",
    ),
    # stage 1: mask-weighted loss and support latent mask
    Mutant(
        "loss-inverted-mask",
        EMBED,
        "sq = sq * mask_latent.to(sq.dtype)",
        "sq = sq * (1 - mask_latent.to(sq.dtype))",
        "embedding",
        "masked_noise_loss",
    ),
    Mutant(
        "loss-mean-over-mask",
        EMBED,
        "        sq = sq * mask_latent.to(sq.dtype)\n    return sq.mean()",
        "        sq = sq * mask_latent.to(sq.dtype)\n        return sq.sum() / mask_latent.expand_as(sq).sum()\n"
        "    return sq.mean()",
        "embedding",
        "masked_noise_loss",
    ),
    Mutant(
        "support-mask-half",
        EMBED,
        "return (resized > 0).float()",
        "return (resized >= 0.5).float()",
        "embedding",
        "latent_mask",
    ),
    Mutant(
        "support-mask-nearest",
        EMBED,
        'mode="bilinear", align_corners=False)\n    return (resized > 0)',
        'mode="nearest")\n    return (resized > 0)',
        "embedding",
        "latent_mask",
    ),
    # metrics
    Mutant("aupro-4-connected", METRICS, "structure=_EIGHT_CONNECTED)", "structure=None)", "metrics", "8_connected"),
    Mutant(
        "aupro-trapezoid", METRICS, "/ (2.0 * n_regions * n_neg)", "/ (1.0 * n_regions * n_neg)", "metrics", "aupro"
    ),
    Mutant(
        "auroc-ties",
        METRICS,
        "(below + upto).astype",
        "(2 * below).astype",
        "metrics",
        "image_metrics or pixel_metrics",
    ),
    Mutant(
        "ap-precision",
        METRICS,
        "precision = tp / (tp + fp)",
        "precision = tp / (tp + fp + 1)",
        "metrics",
        "image_metrics or pixel_metrics",
    ),
    # stage 3: synthetic anomalies and the weak loss
    Mutant(
        "augment-identity", SYNTH, _AUG_LOOP, _AUG_LOOP.replace("return out", "return texture"), "detectors", "augment"
    ),
    Mutant(
        "augment-with-replacement", SYNTH, "size=n, replace=False)", "size=n, replace=True)", "detectors", "augment"
    ),
    Mutant(
        "draem-no-augment",
        SYNTH,
        "normal_prob = 0.5\n    augment = True",
        "normal_prob = 0.5\n    augment = False",
        "detectors",
        "draem_augments",
    ),
    Mutant(
        "invert-identity",
        SYNTH,
        "return (255 - img).astype(np.uint8)",
        "return img.astype(np.uint8)",
        "detectors",
        "formulas",
    ),
    Mutant(
        "blend-swapped",
        SYNTH,
        "blended = (1.0 - beta) * tex + beta * clean",
        "blended = beta * tex + (1.0 - beta) * clean",
        "detectors",
        "blends_it_in",
    ),
    Mutant(
        "weak-p-anomaly",
        LOSSES,
        "confident_normal = (1.0 - p) >= tau",
        "confident_normal = p >= tau",
        "detectors",
        "weak or tau",
    ),
    Mutant(
        "weak-outside-box",
        LOSSES,
        "drop = confident_normal & (box > 0.5)",
        "drop = confident_normal",
        "detectors",
        "weak or tau",
    ),
    Mutant(
        "weak-mean-over-kept",
        LOSSES,
        "return (weight * fmap).mean(), weight",
        "return (weight * fmap).sum() / weight.sum(), weight",
        "detectors",
        "weak or tau",
    ),
    # content keys and planning
    Mutant(
        "keys-allow-non-finite",
        "anogen/keys.py",
        "if isinstance(value, float) and not math.isfinite(value):",
        "if False:",
        "keys",
        "content_keys",
    ),
    Mutant(
        "keys-bool-as-int",
        "anogen/keys.py",
        "        return value\n    if isinstance(value, dict):",
        "        return int(value) if isinstance(value, bool) else value\n    if isinstance(value, dict):",
        "keys",
        "content_keys",
    ),
    Mutant(
        "detector-first-defect-only",
        "anogen/plan_stages.py",
        "for d in self.defects(category)}\n\n    def _detector_data_inputs",
        "for d in self.defects(category)[:1]}\n\n    def _detector_data_inputs",
        "keys",
        "every_defect or later_defect",
    ),
    Mutant(
        "baseline-reads-generation",
        "anogen/plan_stages.py",
        'if variant == "baseline":\n            return {}\n        return {f"generation/',
        'if variant == "none":\n            return {}\n        return {f"generation/',
        "keys",
        "baseline or every_defect or tau",
    ),
    # studies: one test set per study, one generation per N-pool
    Mutant(
        "study-test-set-first-arm",
        "anogen/studies/planner.py",
        "{path for arm in study.arms for path in arm.plan.own_support_exclusions(c)}",
        "{path for arm in study.arms[:1] for path in arm.plan.own_support_exclusions(c)}",
        "studies",
        "one_test_set",
    ),
    Mutant(
        "pool-smallest-n",
        "anogen/studies/planner.py",
        "largest[key] = max(n, largest.get(key, 0))",
        "largest[key] = min(n, largest.get(key, n))",
        "studies",
        "pooled or shared_artifact",
    ),
)
