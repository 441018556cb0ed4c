# Config validation, the plan (categories x defects) and the keyed path of every artifact.
# All logic lives in anogen.plan.Plan; this file only turns it into paths and params.

import functools
import os
import sys
from pathlib import Path

# Import the package from this checkout even when it is not installed (jobs still need it
# installed: `pip install -e .`, or the conda env in envs/).
sys.path.insert(0, str(Path(workflow.basedir)))

from anogen.artifacts import STAGES, thaw
from anogen.config import check_required_sources
from anogen.errors import AnogenError
from anogen.keys import canonical_json
from anogen.options import validated_run_config
from anogen.studies.planner import RunPlan

try:
    # The same step as every `anogen` command's (anogen.options): extends, schema, and without
    # --configfile the demo's config (a random tiny model, demo budgets) only for the demo's data.
    _validated = validated_run_config(
        config, demo_default=not workflow.overwrite_configfiles
    )
    config.clear()
    config.update(_validated)
    # RUN: the config's own plan (PLAN) and one per study arm (anogen.studies.planner); a job is
    # looked up by its key, so an artifact shared by several arms is one job.
    RUN = RunPlan(config)
    PLAN = RUN.base
except AnogenError as _error:
    raise WorkflowError(f"invalid configuration: {_error}") from None

try:
    PLAN.pairs()  # discover categories x defects now: bad data_root / names stop here
except AnogenError as _error:
    raise WorkflowError(f"invalid configuration: {_error}") from None

RESULTS = config["results_dir"]
DATA_ROOT = config["data_root"]
SUMMARY_CSV = f"{RESULTS}/summary.csv"
TABLE1_CSV = f"{RESULTS}/table1.csv"
QUALITY_CSV = f"{RESULTS}/generation_quality.csv"
QUALITY_TARGETS = (
    [QUALITY_CSV, f"{RESULTS}/report/generation_quality.html"]
    if PLAN.computes_quality
    else []
)
LOGS = f"{RESULTS}/logs"

KEY = "[0-9a-f]{12}"
NAME = "[A-Za-z0-9][A-Za-z0-9_.-]*"


wildcard_constraints:
    key=KEY,
    category=NAME,
    defect=NAME,
    detector="draem|destseg",
    variant="baseline|anogen|generated_only",


def as_json(value):
    """Params are compared by repr(): canonical JSON keeps them stable across processes."""
    return canonical_json(value)


# ---------------------------------------------------------------------------- device slots
# Which GPU a job runs on is a property of the machine, not of any result: the slot count and
# lock folder reach the jobs through the environment (anogen.devices reads them), so changing
# them never reruns a job. Under Slurm they are unused (Slurm assigns the devices).
for _var, _value in (
    ("ANOGEN_GPU_SLOTS", config["resources"]["gpu_slots"]),
    ("ANOGEN_LOCK_DIR", config["resources"]["lock_dir"]),
):
    if _value is not None:
        os.environ[_var] = str(_value)
THREADS = config["resources"]["threads"]


# ---------------------------------------------------------------------------- what this run is
# One warning at the start of the run, before any job, for each thing that makes its numbers
# incomparable with the paper (every affected manifest and summary row says so too).
from anogen.provenance import plan_warnings
from snakemake.logging import logger

logger.info(
    f"anogen: diffusion model {PLAN.model_path}"
    + (
        " (tiny, randomly initialised; built by rule tiny_model)"
        if PLAN.tiny_family
        else ""
    )
    + f"; data {config['data_root']}"
)
if not PLAN.computes_quality:
    from anogen.quality.table import NOT_CONFIGURED

    logger.info(f"anogen: {NOT_CONFIGURED}")
for _note in plan_warnings(config):
    logger.warning(f"anogen: WARNING, not a reproduction: {_note}")


# ---------------------------------------------------------------------------- inputs of the data set
def dataset_inputs(wildcards=None):
    """The file that marks the data set as present (the demo's completion marker)."""
    if PLAN.is_demo:
        return [f"{config['demo']['root']}/demo_spec.json"]
    return []


def model_inputs(wildcards=None):
    """The tiny model's (or a local model folder's) index; a hub id is read from the HF cache."""
    if PLAN.tiny_family or Path(PLAN.model_path).is_dir():
        return [f"{PLAN.model_path}/model_index.json"]
    return []


# ---------------------------------------------------------------------------- the artifact graph
# Paths, keys and params all come from PLAN (anogen.plan.Plan over anogen.artifacts.STAGES):
# the rules below only name the stage and the files.
def output_pattern(stage, name=None):
    """A rule's output pattern: {category}... and {key} wildcards under the stage's folder."""
    return STAGES[stage].pattern(RESULTS, name)


def log_pattern(stage, rule):
    return STAGES[stage].log_pattern(LOGS, rule)


def _values(stage, wildcards):
    return tuple(getattr(wildcards, name) for name in STAGES[stage].wildcards)


def job_plan(stage, wildcards):
    """The plan (the config's own, or a study arm's) of the ``stage`` job with these wildcards."""
    return _plan_of(stage, _values(stage, wildcards), wildcards.key)


def _plan_of(stage, values, key):
    try:
        return RUN.plan_for(stage, values, key)
    except AnogenError as error:
        raise WorkflowError(f"{error}") from None


def job_param(stage, part):
    """A params entry (spec, inputs or runtime) of the job with these wildcards, as canonical JSON."""
    return lambda w: _param_json(stage, _values(stage, w), w.key, part)


@functools.cache
def _param_json(stage, values, key, part):
    # Made once per job and part: Snakemake evaluates each params function more than once per
    # job (a study plans over a thousand). Three entries, as Snakemake has recorded them for
    # every finished job: one entry would change its params trigger and rerun them all.
    job = _plan_of(stage, values, key).job(stage, *values)
    return as_json(thaw(getattr(job, part)))


def job_artifact(stage, of, name=None):
    """Input function: file ``name`` of the ``of`` artifact with the same wildcards as the ``stage`` job."""
    return lambda w: job_plan(stage, w).path(of, *_values(stage, w), name=name)


def upstream(stage, of, name=None):
    """Input function: the files of the ``of`` artifacts the ``stage`` job reads (Plan.upstream)."""
    return lambda w: job_plan(stage, w).upstream_paths(
        stage, *_values(stage, w), of=of, name=name
    )


def every(stage, name=None):
    """The files of every planned artifact of ``stage`` (targets and the summary's inputs)."""
    return [PLAN.path(stage, *values, name=name) for values in PLAN.instances(stage)]


def check_detector_sources(wildcards):
    """train_detector's input function that gives no file: it runs only when the DAG holds a
    detector job, so a required DTD folder is checked exactly then (dry runs included).
    """
    try:
        check_required_sources(config)
    except AnogenError as error:
        raise WorkflowError(f"invalid configuration: {error}") from None
    return []


def study_outputs(study):
    """The table, plot and report section the study_table job writes for one study."""
    folder = f"{RESULTS}/studies/{study}"
    return [f"{folder}/table.csv", f"{folder}/plot.png", f"{folder}/section.html"]


def every_study_output(wildcards):
    """`snakemake paper`'s inputs; a config without studies stops here rather than doing nothing."""
    if not RUN.studies:
        raise WorkflowError(
            "this config has no studies, so target 'paper' has nothing to run: give a config with "
            "studies (--configfile config/mvtec-paper-study.yaml, config/demo-study.yaml) or add "
            "a studies: section"
        )
    return [path for study in RUN.studies for path in study_outputs(study)]
