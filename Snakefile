# AnoGen: few-shot anomaly-driven generation for anomaly classification and segmentation.
#
#   snakemake --cores all                          the offline demo (config/config.yaml)
#   snakemake --cores all --resources gpu=4 \
#       --configfile config/mvtec.yaml --config data_root=/data/mvtec_ad   the paper's run
#   snakemake --profile profiles/slurm ...         on a Slurm cluster
#
# The config is validated (and defaults filled) before any job is planned; every artifact
# path carries a content key of exactly the config values it depends on.

from snakemake.utils import min_version

min_version("9.0")


# The offline demo's config is read only when no --configfile is given: a run's own config file
# (config/mvtec.yaml, yours) is the whole config, over the schema's defaults (the paper's values),
# so no demo-only setting (tiny random model, demo data, paste-back, demo budgets) can leak into it.
DEMO_CONFIG = "config/config.yaml"
if not workflow.overwrite_configfiles:

    configfile: DEMO_CONFIG


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/embedding.smk"
include: "workflow/rules/generation.smk"
include: "workflow/rules/detectors.smk"
include: "workflow/rules/evaluation.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        SUMMARY_CSV,
        TABLE1_CSV,
        [generation_output(c, d, "montage.png") for c, d in PLAN.pairs()],
        # report items that no later rule reads (a missing one must still be made)
        [
            evaluation_output(c, m, v, "training_loss.png")
            for c, m, v in PLAN.detector_runs()
        ],


# ---------------------------------------------------------------------------- stage targets
# `snakemake support embeddings` (or generated, detectors, evaluation) runs the named stages of
# every planned (category, defect) and what they need, nothing downstream of them.


rule support:
    input:
        [support_output(c, d) for c, d in PLAN.pairs()],
    localrule: True


rule embeddings:
    input:
        [
            embedding_output(c, d, name)
            for c, d in PLAN.pairs()
            for name in ("manifest.json", "learned_embeds.safetensors")
        ],
    localrule: True


rule generated:
    input:
        [
            generation_output(c, d, name)
            for c, d in PLAN.pairs()
            for name in ("manifest.json", "montage.png")
        ],
    localrule: True


rule detectors:
    input:
        [detector_output(c, m, v) for c, m, v in PLAN.detector_runs()],
    localrule: True


rule evaluation:
    input:
        [evaluation_output(c, m, v) for c, m, v in PLAN.detector_runs()],
        SUMMARY_CSV,
        TABLE1_CSV,
    localrule: True
