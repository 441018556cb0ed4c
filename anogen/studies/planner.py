"""The run's plans: the config's own (``base``) and one per study arm, sharing every common artifact.

A study arm is the config with a few values changed (``studies.<s>.arms[i].set``), trained and
evaluated on the study's detectors in one variant. Each arm gets its own :class:`Plan`; since
every artifact is content-addressed, two arms that read the same values get the same key, so
Snakemake (which deduplicates jobs by output path) builds that artifact once. Two things are
decided across plans, before any key is computed:

1. **One test set per study.** Every arm of a study is evaluated on the test split less the
   union of all its arms' support images (under ``support.exclude_from_test``): k = 5 takes more
   anomalies out than k = 1, and comparing arms on different images would mix the effect of
   the arm with that of the test set. Seeded sets of one seed are nested (anogen.data.support),
   so Table 2b's union is its k = 5 set. An arm whose own support sets are the config's is
   also evaluated on the config's own test set (``Arm.base_test``: Table 1's in the paper
   study), where its study's union is smaller than that: the same detector, one more
   evaluation, so the study's table can show what its smaller test set changes.
2. **One generation per N-pool.** Generated sets whose spec and inputs differ only in
   ``generation.images_per_normal`` are one set at the largest N among the plans of the run;
   a detector whose config says N = k reads its first k images per normal image (the sampling
   is prefix-stable: N = k alone is byte-identical to that subset, see anogen.generation.run).

The workflow looks a job up by its stage, wildcards and key (:meth:`RunPlan.plan_for`), so the
rules stay the same whatever plan an artifact comes from.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from anogen.config import deep_update, validate_config
from anogen.errors import ConfigError
from anogen.keys import content_key
from anogen.plan import Plan
from anogen.plan_stages import _NOT_IN_KEYS

# What an arm may not change: where the run reads and writes, what it runs (the study decides
# detectors and variant), and values that only change speed (arms sharing an artifact would
# disagree on how to build it, and a speed setting is no ablation).
_FIXED_KEYS = (
    ("data_root",),
    ("data_layout",),
    ("results_dir",),
    ("demo",),
    ("resources",),
    ("studies",),
    ("extends",),
    ("categories",),
    ("defects",),
    ("detectors", "models"),
    ("detectors", "variants"),
    ("detectors", "checkpoint_every"),
    ("support", "exclude_from_test"),  # the study's one test set is made under the config's rule
    ("quality", "batch_size"),
    *((section, name) for section, names in _NOT_IN_KEYS.items() for name in sorted(names)),
)


@dataclass(frozen=True)
class Arm:
    """One arm of a study: its settings and its plan."""

    study: str
    name: str
    label: str
    variant: str
    paper_column: str | None
    x: float | None
    plan: Plan
    # The plan that evaluates this arm's detectors on the config's own test set (its own plan
    # when that is the study's test set too); None when the arm's support sets are not the config's.
    base_test: Plan | None = None

    def runs(self) -> list[tuple[str, str, str]]:
        """The (category, detector, variant) evaluations this arm reports."""
        return self.plan.detector_runs()


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    paper: str | None
    detectors: tuple[str, ...]
    plot: dict | None
    arms: tuple[Arm, ...]


def _set_paths(values: dict, prefix: tuple[str, ...] = ()):
    """Every leaf path of a nested ``set:`` mapping."""
    for key, value in values.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            yield from _set_paths(value, path)
        else:
            yield path


def _refuse_hidden_tau(config: dict, arm: dict, detectors: list[str], where: str) -> None:
    """An arm's ``detectors.tau`` is only the fallback: where the config sets ``detectors.<d>.tau``
    for a detector of the study (the authors' preset does), every arm would train that detector
    with the config's tau, so the arms would differ in name only."""
    changes = arm["set"].get("detectors") or {}
    if "tau" not in changes:
        return
    hidden = {
        d: config["detectors"][d]["tau"]
        for d in detectors
        if config["detectors"][d]["tau"] is not None and "tau" not in (changes.get(d) or {})
    }
    if hidden:
        raise ConfigError(
            f"{where}.detectors.tau",
            "the config sets "
            + ", ".join(f"detectors.{d}.tau ({tau})" for d, tau in hidden.items())
            + ", which overrides detectors.tau, so this arm would not change it; set "
            + " and ".join(f"detectors.{d}.tau" for d in hidden)
            + " in the arm instead",
        )


def arm_config(config: dict, study: str, arm: dict, detectors: list[str]) -> dict:
    """The validated config of one arm: ``config`` with the arm's ``set`` values, the study's
    detectors and the arm's variant; errors name ``studies.<study>.arms.<arm>.set.<key>``."""
    where = f"studies.{study}.arms.{arm['name']}.set"
    for path in _set_paths(arm["set"]):
        for fixed in _FIXED_KEYS:
            if path[: len(fixed)] == fixed:
                raise ConfigError(
                    f"{where}.{'.'.join(path)}",
                    f"an arm cannot change {'.'.join(fixed)} (the run's data, outputs, test-set rule, speed "
                    "settings and the study's detectors are the same for every arm; set it at the top level "
                    "or in the study)",
                )
    _refuse_hidden_tau(config, arm, detectors, where)
    raw = deep_update(config, arm["set"])
    raw["studies"] = {}
    raw["detectors"] = {**raw["detectors"], "models": list(detectors), "variants": [arm["variant"]]}
    try:
        # the config is valid already: only the sections the arm changes are checked again
        return validate_config(raw, changed_sections=set(arm["set"]) | {"detectors"})
    except ConfigError as error:
        raise ConfigError(f"{where}.{error.key}", error.problem) from None


class RunPlan:
    """The base plan and every study arm's plan, with the cross-plan decisions made."""

    def __init__(self, config: dict, layout: dict[str, dict] | None = None):
        self.config = config
        self.base = Plan(config, layout)
        if not config["studies"]:
            self.studies: dict[str, Study] = {}
            self.plans: tuple[Plan, ...] = (self.base,)
            return
        layout = self.base.layout  # listed once, shared by every arm
        self.base.pairs()  # a bad category or defect selection stops here, named as the config's own
        studies = {}
        for name, study in config["studies"].items():
            names = [arm["name"] for arm in study["arms"]]
            duplicate = sorted({n for n in names if names.count(n) > 1})
            if duplicate:
                raise ConfigError(f"studies.{name}.arms", f"arm names {duplicate} are used more than once")
            arms = tuple(
                Arm(
                    study=name,
                    name=arm["name"],
                    label=arm.get("label") or arm["name"],
                    variant=arm["variant"],
                    paper_column=arm["paper_column"],
                    x=arm["x"],
                    plan=Plan(arm_config(config, name, arm, study["detectors"]), layout),
                )
                for arm in study["arms"]
            )
            studies[name] = Study(
                name, study.get("title") or name, study["paper"], tuple(study["detectors"]), study["plot"], arms
            )
        for plan in (arm.plan for s in studies.values() for arm in s.arms):
            plan.data_memo = self.base.data_memo  # one data set, listed and fingerprinted once
        for name, study in studies.items():
            _share_test_set(study)
            studies[name] = _with_base_test(study, self.base)
        self.studies = studies
        arm_plans = [p for s in studies.values() for arm in s.arms for p in (arm.plan, arm.base_test) if p is not None]
        self.plans = (self.base, *dict.fromkeys(arm_plans))  # each plan once, in arm order
        _pool_generations(self.plans)  # the base-test plans too: their detectors are their arms'

    # ------------------------------------------------------------------ lookups
    @functools.cached_property
    def _study_registry(self) -> dict[tuple[str, tuple[str, ...], str], Plan]:
        return self.study_artifacts() if self.studies else {}

    @functools.cache
    def plan_for(self, stage: str, values: tuple[str, ...], key: str) -> Plan:
        """The plan that plans the ``stage`` artifact with these wildcards and this key."""
        # The studies' artifacts are listed once (a key asked of every arm's plan in turn would
        # compute keys that no target needs); then the config's own plan, then any arm's.
        found = self._study_registry.get((stage, values, key))
        if found is not None:
            return found
        for plan in self.plans:
            if values in plan.instances(stage) and plan.key(stage, *values) == key:
                return plan
        raise ConfigError(
            "studies" if self.studies else "results_dir",
            f"no planned {stage} artifact {'/'.join(values)} has key {key} (a path from another "
            "config or an older checkout: ask for a target of this config instead)",
        )

    def study(self, name: str) -> Study:
        if name not in self.studies:
            raise ConfigError("studies", f"no study {name!r} in this config (studies: {sorted(self.studies)})")
        return self.studies[name]

    def evaluation_files(self, name: str) -> list[str]:
        """metrics.json and manifest.json of every evaluation the study's table reads (each once)."""
        files = [
            plan.path("evaluation", *run, name=file)
            for arm in self.study(name).arms
            for plan in (arm.plan, arm.base_test)
            if plan is not None
            for run in arm.runs()
            for file in ("metrics.json", "manifest.json")
        ]
        return list(dict.fromkeys(files))

    def study_spec(self, name: str) -> dict[str, Any]:
        """What the study's gather job reads (anogen.studies.table.write_study)."""
        study = self.study(name)
        return {
            "name": study.name,
            "title": study.title,
            "paper": study.paper,
            "plot": study.plot,
            "arms": [
                {
                    "name": arm.name,
                    "label": arm.label,
                    "paper_column": arm.paper_column,
                    "x": arm.x,
                    "evaluations": [_evaluation_entry(arm, run) for run in arm.runs()],
                }
                for arm in study.arms
            ],
        }

    # ------------------------------------------------------------------ the jobs
    def study_artifacts(self, names: list[str] | None = None) -> dict[tuple[str, tuple[str, ...], str], Plan]:
        """Every keyed artifact the studies ``names`` (default: all) need, once: (stage, values, key) -> plan."""
        needed: dict[tuple[str, tuple[str, ...], str], Plan] = {}
        for name in names if names is not None else list(self.studies):
            for arm in self.study(name).arms:
                for run in arm.runs():
                    closure(arm.plan, "evaluation", run, needed)
                    if arm.base_test is not None:  # one more evaluation of the same detector
                        closure(arm.base_test, "evaluation", run, needed)
        return needed


def _evaluation_entry(arm: Arm, run: tuple[str, str, str]) -> dict[str, Any]:
    """One evaluation as the study's table reads it: its files, and those on the config's own test set."""
    c, m, v = run
    entry = {
        "category": c,
        "detector": m,
        "variant": v,
        "metrics": arm.plan.path("evaluation", c, m, v, name="metrics.json"),
        "manifest": arm.plan.path("evaluation", c, m, v, name="manifest.json"),
    }
    if arm.base_test is not None:
        entry["base_metrics"] = arm.base_test.path("evaluation", c, m, v, name="metrics.json")
        entry["base_manifest"] = arm.base_test.path("evaluation", c, m, v, name="manifest.json")
    return entry


def closure(plan: Plan, stage: str, values: tuple[str, ...], needed: dict) -> None:
    """Add the artifact and everything upstream of it (depth first, each once)."""
    entry = (stage, tuple(values), plan.key(stage, *values))
    if entry in needed:
        return
    needed[entry] = plan
    for up_stage, up_values in plan.upstream(stage, *values).values():
        closure(plan, up_stage, up_values, needed)


def _share_test_set(study: Study) -> None:
    """Every arm of ``study`` evaluated on the test split less the union of all arms' support images."""
    categories = study.arms[0].plan.categories
    union = {
        c: tuple(sorted({path for arm in study.arms for path in arm.plan.own_support_exclusions(c)}))
        for c in categories
    }
    for arm in study.arms:
        arm.plan.study_excluded = union  # tuples: nothing an arm could change


def _with_base_test(study: Study, base: Plan) -> Study:
    """``study`` with ``Arm.base_test`` set: the plan that evaluates an arm on the config's own test
    set. Only an arm whose support sets are the config's has one (any other arm's support images
    are in that test set); it is the arm's own plan where the study's test set is that one already,
    else the arm's config planned alone (same keys up to the evaluation, which leaves out only the
    config's own support images)."""
    arms = []
    for arm in study.arms:
        categories = arm.plan.categories
        reference = None
        if all(arm.plan.own_support_exclusions(c) == base.own_support_exclusions(c) for c in categories):
            shared = all(arm.plan.excluded_from_test(c) == base.own_support_exclusions(c) for c in categories)
            reference = arm.plan if shared else Plan(arm.plan.config, base.layout)
            reference.data_memo = base.data_memo
        arms.append(dataclasses.replace(arm, base_test=reference))
    return dataclasses.replace(study, arms=tuple(arms))


def _pool_generations(plans: tuple[Plan, ...]) -> None:
    """Generated sets that differ only in images_per_normal become one, at the largest N."""
    identity: dict[tuple[int, str, str], str] = {}
    largest: dict[str, int] = {}
    for index, plan in enumerate(plans):
        for c, d in plan.pairs():
            spec = dict(plan.spec("generation", c, d))
            n = int(spec.pop("images_per_normal"))
            key = content_key(spec, plan.inputs("generation", c, d))
            identity[(index, c, d)] = key
            largest[key] = max(n, largest.get(key, 0))
    for (index, c, d), key in identity.items():
        plans[index].generation_pool[(c, d)] = largest[key]
