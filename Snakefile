# AnoGen: few-shot anomaly-driven generation for anomaly classification and segmentation.
#
#   snakemake --cores all                          the offline demo (config/config.yaml)
#   snakemake --cores all --resources gpu=4 \
#       --configfile config/mvtec.yaml --config data_root=/data/mvtec_ad   the paper's run
#   snakemake --profile profiles/slurm ...         on a Slurm cluster
#   snakemake paper --cores all --configfile config/mvtec-paper-study.yaml ...   the paper's ablations
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
include: "workflow/rules/quality.smk"
include: "workflow/rules/studies.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        SUMMARY_CSV,
        TABLE1_CSV,
        every("generation", "montage.png"),
        # report items that no later rule reads (a missing one must still be made)
        every("evaluation", "training_loss.png"),
        # only with both metric weight files configured (PLAN.computes_quality)
        QUALITY_TARGETS,


# ---------------------------------------------------------------------------- stage targets
# `snakemake support embeddings` (or generated, detectors, evaluation) runs the named stages of
# every planned (category, defect) and what they need, nothing downstream of them.


rule support:
    input:
        every("support"),
    localrule: True


rule embeddings:
    input:
        every("embedding"),
        every("embedding", "learned_embeds.safetensors"),
    localrule: True


rule generated:
    input:
        every("generation"),
        every("generation", "montage.png"),
    localrule: True


rule quality:
    input:
        QUALITY_TARGETS,
    localrule: True


rule detectors:
    input:
        every("detector"),
    localrule: True


rule evaluation:
    input:
        every("evaluation"),
        SUMMARY_CSV,
        TABLE1_CSV,
    localrule: True
