"""``anogen estimate``: GPU-hours per stage and wall time on N GPUs for any config.

The work of each job comes from ``Plan`` (which jobs exist) and the config (their budgets);
the speed of a GPU comes from a measured throughput table in ``bench/results/``
(``throughput_<gpu>.json``; ``bench/gpu_check.py`` writes one in the same format, so a new
GPU run replaces the seeded one). Work model per job:

- embedding (one per (category, defect)): ``steps`` / steps_per_s;
- generation (one per (category, defect)): ``n_normal x N`` images (N: the generation spec's ``images_per_normal``)
  / images_per_s, scaled linearly by DDIM steps (measured at ``steps`` of the table);
- detector (one per (category, detector, variant)): DRAEM ``epochs x ceil(n_train / batch)
  x batch`` images, DeSTSeg ``steps x batch`` images / images_per_s of that detector,
  scaled by pixel count from the table's image size;
- evaluation (one per detector run): test images / images_per_s;
- generation quality (one per (category, defect), only when the metric weights are configured):
  Inception forwards of the generated and real images, twice (whole, crop), / ``inception_images_per_s``
  plus the LPIPS pairs of IC-LPIPS (generated x support, and the pairs inside equal clusters),
  twice, / ``lpips_pairs_per_s`` (``bench/bench_quality.py`` measures both);
- plus the table's per-job ``overhead_s`` (model loading, warm-up) where it is measured.

``n_normal``/``n_train``/test counts are counted in ``data_root`` when it exists, else the
published MVTec AD counts below are used for MVTec category names (the demo's counts come
from its config). Wall time: a greedy list schedule of all GPU jobs over N GPUs (longest
ready job first), where a generation waits for its embedding, an ``anogen``/
``generated_only`` detector for every generation of its category, and an evaluation for
its detector. CPU-only jobs (support selection, foreground, export, summary) are not counted.
"""

from __future__ import annotations

import glob
import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from anogen.data.index import is_skipped
from anogen.data.layouts import scan_category

# category: (train/good, test/good, {defect: n_test}), used when the data set is not at hand
from anogen.data.mvtec_counts import MVTEC_AD_COUNTS as MVTEC_AD
from anogen.errors import ConfigError
from anogen.plan import Plan
from anogen.studies.planner import RunPlan, closure

FORMAT = "anogen-throughput/1"
RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"
DEFAULT_GPU = "H200"

STAGES = ("embedding", "generation", "detector", "evaluation")


# ----------------------------------------------------------------------------- throughput tables


def _slug(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def list_tables(results_dir: Path = RESULTS_DIR) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(glob.glob(str(Path(results_dir) / "throughput_*.json"))):
        try:
            table = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if table.get("format") == FORMAT and table.get("device") != "cpu":
            out.append((Path(path), table))
    return out


def find_table(gpu_model: str | None = None, results_dir: Path = RESULTS_DIR) -> tuple[Path, dict] | None:
    """The newest table whose ``gpu_model`` contains ``gpu_model`` (case and punctuation ignored)."""
    want = _slug(gpu_model or DEFAULT_GPU)
    hits = [(p, t) for p, t in list_tables(results_dir) if want in _slug(str(t.get("gpu_model", "")))]
    if not hits:
        return None
    return max(hits, key=lambda pt: (str(pt[1].get("date", "")), str(pt[0])))


class MissingMeasurement(LookupError):
    """The throughput table has no rate for a stage the config runs (a partial device check)."""


def _rate(table: dict, stage: str) -> dict:
    entry = table.get("stages", {}).get(stage)
    if not entry or not entry.get("value"):
        # bench/gpu_check.py writes its table after every phase: one cut short lacks later stages
        raise MissingMeasurement(stage)
    return entry


# ----------------------------------------------------------------------------- counts


@dataclass
class Counts:
    n_train: dict[str, int]
    n_test: dict[str, int]
    source: str


def _plan_for(config: dict) -> tuple[Plan, str]:
    """A Plan; when data_root is missing, the published MVTec AD layout stands in for it."""
    layout, source = _layout_for(config)
    return Plan(config, layout=layout), source


def _layout_for(config: dict) -> tuple[dict | None, str]:
    """None (list data_root) and where counts come from; the published MVTec AD layout when data_root is missing."""
    is_demo = Plan(config).is_demo
    if is_demo or Path(config["data_root"]).is_dir():
        return None, "counted in " + ("the demo config" if is_demo else config["data_root"])
    # "texture" as a folder listing would give it (anogen.data.layouts.discover); no count depends on it
    layout = {c: {"defects": list(d), "texture": False} for c, (_, _, d) in MVTEC_AD.items()}  # repeated on purpose
    return layout, f"published MVTec AD counts ({config['data_root']} does not exist)"


def count_images(plan: Plan, source: str) -> Counts:
    cfg = plan.config
    n_train, n_test = {}, {}
    for c in plan.categories:
        if plan.is_demo:
            d = cfg["demo"]
            n_train[c] = int(d["n_train_good"])
            n_test[c] = int(d["n_test_good"]) + int(d["n_test_per_defect"]) * len(plan.defects(c))
        elif source.startswith("counted"):
            scan = scan_category(cfg["data_root"], c, defects=())
            n_train[c] = len(scan.train_good)
            root = Path(cfg["data_root"]) / c / "test"
            n_test[c] = (
                sum(1 for p in root.rglob("*") if p.is_file() and not is_skipped(p.name)) if root.is_dir() else 0
            )
        else:
            if c not in MVTEC_AD:
                raise ConfigError(
                    "categories", f"{c!r} is not an MVTec AD category and {cfg['data_root']!r} does not exist"
                )
            tr, good, defects = MVTEC_AD[c]
            n_train[c] = tr
            n_test[c] = good + sum(defects.values())
    return Counts(n_train, n_test, source)


# ----------------------------------------------------------------------------- jobs


@dataclass
class Job:
    name: str
    stage: str
    seconds: float
    deps: tuple[str, ...] = ()
    work: float = 0.0
    unit: str = ""
    plan: Plan | None = None  # the arm's plan, in a study estimate (None: the config's own)


@dataclass
class Estimate:
    jobs: list[Job]
    table_path: Path
    table: dict
    counts: Counts
    notes: list[str] = field(default_factory=list)

    @property
    def stages(self) -> tuple[str, ...]:
        """STAGES, plus ``quality`` when the config computes the generation-quality metrics."""
        return STAGES + (("quality",) if any(j.stage == "quality" for j in self.jobs) else ())

    def stage_hours(self) -> dict[str, float]:
        out = {s: 0.0 for s in self.stages}
        for j in self.jobs:
            out[j.stage] += j.seconds / 3600
        return out

    def stage_jobs(self) -> dict[str, int]:
        out = {s: 0 for s in self.stages}
        for j in self.jobs:
            out[j.stage] += 1
        return out


class _Costs:
    """Seconds and work of one job of any plan, from the throughput table (notes collected)."""

    def __init__(self, table: dict, counts: Counts):
        self.table, self.counts, self.notes = table, counts, []

    @staticmethod
    def _overhead(entry: dict) -> float:
        return float(entry.get("overhead_s") or 0.0)

    def embedding(self, plan: Plan, c: str, d: str) -> tuple[float, float, str]:
        emb, cfg = _rate(self.table, "embedding"), plan.config["embedding"]
        if emb.get("batch_size") is not None and int(emb["batch_size"]) != int(cfg["batch_size"]):
            self.notes.append(
                f"embedding measured at batch {emb.get('batch_size')}, config batch {cfg['batch_size']} "
                "(steps/s used unscaled)"
            )
        steps = int(cfg["steps"])
        return steps / float(emb["value"]) + self._overhead(emb), steps, "steps"

    def generated_images(self, plan: Plan, c: str, d: str) -> int:
        gen_cfg = plan.config["generation"]
        n_normal = self.counts.n_train[c]
        if gen_cfg["max_normal_images"]:
            n_normal = min(n_normal, int(gen_cfg["max_normal_images"]))
        # the images the job makes: its N, which in a study is the largest N of its pool
        return n_normal * int(plan.spec("generation", c, d)["images_per_normal"])

    def generation(self, plan: Plan, c: str, d: str) -> tuple[float, float, str]:
        gen, cfg = _rate(self.table, "generation"), plan.config["generation"]
        if gen.get("batch_size") and int(gen["batch_size"]) != int(cfg["batch_size"]):
            self.notes.append(
                f"generation measured at batch {gen['batch_size']}, config batch {cfg['batch_size']} "
                "(images/s used unscaled)"
            )
        ips = float(gen["value"]) * int(gen.get("steps") or cfg["steps"]) / int(cfg["steps"])
        images = self.generated_images(plan, c, d)
        return images / ips + self._overhead(gen), images, "images"

    def quality(self, plan: Plan, c: str, d: str) -> tuple[float, float, str]:
        entry = self.table.get("stages", {}).get("quality") or {}
        shots = int(plan.config["support"]["shots"])
        images = self.generated_images(plan, c, d)
        n_real = max(0, _n_defect(plan, self.counts, c, d) - shots)
        return quality_seconds(images, n_real, shots, entry, self.notes), images, "images"

    def detector(self, plan: Plan, c: str, m: str, v: str) -> tuple[float, float, str]:
        entry = _rate(self.table, f"detector_{m}")
        size = int(plan.config["detectors"]["image_size"])
        ref = int(entry.get("image_size") or size)
        ips = float(entry["value"]) * (ref / size) ** 2
        if ref != size:
            self.notes.append(f"{m}: measured at {ref} px, scaled by pixel count to {size} px")
        section = plan.detector_section(m, v)
        bs = int(section["batch_size"])
        if m == "draem":
            images = int(section["epochs"]) * math.ceil(self.counts.n_train[c] / bs) * bs
        else:
            images = int(section["steps"]) * bs
        return images / ips + self._overhead(entry), images, "images"

    def evaluation(self, plan: Plan, c: str, m: str, v: str) -> tuple[float, float, str]:
        entry = self.table.get("stages", {}).get("evaluation") or {}
        n_test = self.counts.n_test[c]
        if not entry.get("value"):
            self.notes.append("evaluation not measured for this GPU: counted as 0 h")
            return 0.0, n_test, "images"
        return n_test / float(entry["value"]) + self._overhead(entry), n_test, "images"


def build_jobs(config: dict, table: dict, table_path: Path) -> Estimate:
    plan, source = _plan_for(config)
    counts = count_images(plan, source)
    costs = _Costs(table, counts)
    jobs: list[Job] = []
    for c, d in plan.pairs():
        e_name, g_name = f"embedding/{c}/{d}", f"generation/{c}/{d}"
        seconds, work, unit = costs.embedding(plan, c, d)
        jobs.append(Job(e_name, "embedding", seconds, (), work, unit))
        seconds, work, unit = costs.generation(plan, c, d)
        jobs.append(Job(g_name, "generation", seconds, (e_name,), work, unit))
        if plan.computes_quality:
            seconds, work, unit = costs.quality(plan, c, d)
            jobs.append(Job(f"quality/{c}/{d}", "quality", seconds, (g_name,), work, unit))
    for c, m, v in plan.detector_runs():
        deps = () if v == "baseline" else tuple(f"generation/{c}/{d}" for d in plan.defects(c))
        d_name = f"detector/{c}/{m}/{v}"
        seconds, work, unit = costs.detector(plan, c, m, v)
        jobs.append(Job(d_name, "detector", seconds, deps, work, unit))
        seconds, work, unit = costs.evaluation(plan, c, m, v)
        jobs.append(Job(f"evaluation/{c}/{m}/{v}", "evaluation", seconds, (d_name,), work, unit))
    return Estimate(jobs, table_path, table, counts, sorted(set(costs.notes)))


# ----------------------------------------------------------------------------- studies
# A study config runs every arm's artifacts once (anogen.studies.planner): its cost is that of
# the distinct artifacts, set beside the cost of running each arm as a run of its own.
GPU_STAGES = ("embedding", "generation", "quality", "detector", "evaluation")
CPU_STAGES = ("support", "foreground")


@dataclass
class StudyEstimate:
    shared: Estimate
    alone: Estimate
    cpu_jobs: dict[str, int]  # distinct support / foreground jobs (CPU, not timed)
    n_studies: int
    n_arms: int


def _artifact_jobs(artifacts: dict, costs: _Costs, prefix: str = "") -> list[Job]:
    """A Job per GPU artifact of ``{(stage, values, key): plan}``, named by key (so shared ones are one)."""

    def name(stage, values, key):
        return f"{prefix}{stage}/{'/'.join(values)}/{key}"

    jobs = []
    for (stage, values, key), plan in artifacts.items():
        if stage not in GPU_STAGES:
            continue
        seconds, work, unit = getattr(costs, stage)(plan, *values)
        deps = tuple(name(s, v, plan.key(s, *v)) for s, v in plan.upstream(stage, *values).values() if s in GPU_STAGES)
        jobs.append(Job(name(stage, values, key), stage, seconds, deps, work, unit, plan))
    return jobs


def build_study_jobs(config: dict, table: dict, table_path: Path) -> StudyEstimate:
    """The studies' cost with sharing (each distinct artifact once) and with each arm run alone."""
    layout, source = _layout_for(config)
    run = RunPlan(config, layout)
    if not run.studies:
        raise ConfigError("studies", "this config has no study: build_jobs costs the config's own run")
    counts = count_images(run.base, source)
    costs = _Costs(table, counts)
    shared = run.study_artifacts()
    alone: list[Job] = []
    arms = [arm for study in run.studies.values() for arm in study.arms]
    for arm in arms:
        own = Plan(arm.plan.config, layout=run.base.layout)  # no pooled generation, its own test set
        own.data_memo = run.base.data_memo  # the same data set: listed and fingerprinted once
        needed: dict = {}
        for values in own.detector_runs():
            closure(own, "evaluation", values, needed)
        alone += _artifact_jobs(needed, costs, prefix=f"{arm.study}/{arm.name}:")
    cpu = {stage: sum(1 for (s, _, _) in shared if s == stage) for stage in CPU_STAGES}
    if layout is not None:
        costs.notes.append(
            "support sets are chosen among the data's file names: without the data, arms with other support "
            "sets share their study's test set here, so those studies' repeated evaluations are not counted"
        )
    notes = sorted(set(costs.notes))
    return StudyEstimate(
        Estimate(_artifact_jobs(shared, costs), table_path, table, counts, notes),
        Estimate(alone, table_path, table, counts, notes),
        cpu,
        len(run.studies),
        len(arms),
    )


def format_study_report(est: StudyEstimate, n_gpus: int) -> str:
    shared, alone = est.shared, est.alone
    stages = [s for s in GPU_STAGES if s in shared.stages]
    s_hours, a_hours = shared.stage_hours(), alone.stage_hours()
    s_jobs, a_jobs = shared.stage_jobs(), alone.stage_jobs()
    lines = [
        *_report_header(shared),
        f"{est.n_studies} studies, {est.n_arms} arms",
        "",
        f"{'stage':<11} {'jobs':>6} {'GPU-hours':>10}   {'each arm alone: jobs':>21} {'GPU-hours':>10}",
    ]
    for stage in CPU_STAGES:
        lines.append(f"{stage:<11} {est.cpu_jobs[stage]:>6} {'(CPU)':>10}")
    for stage in stages:
        lines.append(
            f"{stage:<11} {s_jobs[stage]:>6} {s_hours[stage]:>10.2f}   {a_jobs.get(stage, 0):>21} "
            f"{a_hours.get(stage, 0.0):>10.2f}"
        )
    total_s, total_a = sum(s_hours.values()), sum(a_hours.values())
    wall_s, wall_a = list_schedule(shared.jobs, n_gpus) / 3600, list_schedule(alone.jobs, n_gpus) / 3600
    saved = total_a - total_s
    lines += [
        f"{'total':<11} {len(shared.jobs):>6} {total_s:>10.2f}   {len(alone.jobs):>21} {total_a:>10.2f}",
        "",
        f"wall time on {n_gpus} GPU{'s' if n_gpus != 1 else ''}: {wall_s:.2f} h shared, {wall_a:.2f} h with "
        "each arm alone (greedy list schedule, longest ready job first)",
        f"sharing saves {saved:.2f} GPU-hours ({100 * saved / total_a if total_a else 0:.0f}% of running each arm alone)",
    ]
    lines += [f"note: {n}" for n in shared.notes]
    return "\n".join(lines)


def _n_defect(plan: Plan, counts: Counts, category: str, defect: str) -> int:
    """Test images of one defect type (the real anomalies KID compares with)."""
    cfg = plan.config
    if plan.is_demo:
        return int(cfg["demo"]["n_test_per_defect"])
    if counts.source.startswith("counted"):
        folder = Path(cfg["data_root"]) / category / "test" / defect
        return sum(1 for p in folder.iterdir() if p.is_file() and not is_skipped(p.name)) if folder.is_dir() else 0
    return int(MVTEC_AD[category][2].get(defect, 0))


def quality_seconds(n_generated: int, n_real: int, n_support: int, entry: dict, notes: list[str]) -> float:
    """One generation-quality job: Inception forwards and LPIPS pairs, whole images and crops."""
    if not entry.get("inception_images_per_s") or not entry.get("lpips_pairs_per_s"):
        notes.append("generation quality not measured for this GPU: counted as 0 h (bench/bench_quality.py)")
        return 0.0
    forwards = 2 * (n_generated + n_real + n_support)
    per_cluster = n_generated / max(1, n_support)
    pairs = 2 * (n_generated * n_support + n_support * per_cluster * (per_cluster - 1) / 2)
    overhead = float(entry.get("overhead_s") or 0.0)
    return forwards / float(entry["inception_images_per_s"]) + pairs / float(entry["lpips_pairs_per_s"]) + overhead


def list_schedule(jobs: list[Job], n_gpus: int) -> float:
    """Makespan (s) of a greedy list schedule: whenever a GPU is free, it takes the longest
    job whose dependencies have finished; if none is ready it waits for the next one."""
    if n_gpus < 1:
        raise ValueError("n_gpus must be >= 1")
    by_name = {j.name: j for j in jobs}
    finish: dict[str, float] = {}
    remaining = {j.name for j in jobs}
    gpus = [0.0] * n_gpus
    heapq.heapify(gpus)
    while remaining:
        t = heapq.heappop(gpus)
        ready, later = [], []
        for name in remaining:
            deps = [d for d in by_name[name].deps if d in by_name]
            if all(d in finish for d in deps):
                at = max((finish[d] for d in deps), default=0.0)
                (ready if at <= t else later).append((name, at))
        if not ready:
            heapq.heappush(gpus, min(at for _, at in later))  # idle until the next job is ready
            continue
        name = max(ready, key=lambda na: (by_name[na[0]].seconds, na[0]))[0]
        finish[name] = t + by_name[name].seconds
        remaining.discard(name)
        heapq.heappush(gpus, finish[name])
    return max(finish.values(), default=0.0)


def estimate(
    config: dict, n_gpus: int = 1, gpu_model: str | None = None, results_dir: Path = RESULTS_DIR
) -> Estimate | None:
    found = find_table(gpu_model, results_dir)
    if found is None:
        return None
    return build_jobs(config, found[1], found[0])


def _report_header(est: Estimate) -> list[str]:
    """Which throughput table (and whether its device check failed) and where the image counts come from."""
    t = est.table
    origin = t.get("source", "measured")  # repeated on purpose: the throughput table's field, not embedding.source
    failed = [c["check"] for c in t.get("checks", []) if not c.get("ok")]
    return [
        f"throughput: {est.table_path.name} -- {t.get('gpu_model')} ({origin}, {t.get('date', '?')})",
        *([f"WARNING: that device check failed {len(failed)} check(s): {', '.join(failed)}"] if failed else []),
        f"image counts: {est.counts.source}",
    ]


def format_report(est: Estimate, n_gpus: int) -> str:
    t = est.table
    lines = [
        *_report_header(est),
        "",
        f"{'stage':<11} {'jobs':>5} {'work':>14} {'rate (measured)':>28} {'GPU-hours':>10}",
    ]
    hours, njobs = est.stage_hours(), est.stage_jobs()
    for stage in est.stages:
        sj = [j for j in est.jobs if j.stage == stage]
        work = sum(j.work for j in sj)
        unit = sj[0].unit if sj else ""
        keys = (
            ["embedding"]
            if stage == "embedding"
            else ["generation"]
            if stage == "generation"
            else (["detector_draem", "detector_destseg"] if stage == "detector" else [stage])
        )
        rates = []
        for k in keys:
            e = t.get("stages", {}).get(k) or {}
            if e.get("value"):
                rates.append(f"{e['value']:g} {e.get('unit', '')}".strip())
            if k == "quality" and e.get("inception_images_per_s"):
                rates.append(f"{e['inception_images_per_s']:g} Inception img/s")
        lines.append(
            f"{stage:<11} {njobs[stage]:>5} {work:>10.0f} {unit:<3} {', '.join(rates) or 'n/a':>28} "
            f"{hours[stage]:>10.2f}"
        )
    total = sum(hours.values())
    wall = list_schedule(est.jobs, n_gpus) / 3600
    lines += [
        f"{'total':<11} {len(est.jobs):>5} {'':>14} {'':>28} {total:>10.2f}",
        "",
        f"wall time on {n_gpus} GPU{'s' if n_gpus != 1 else ''}: {wall:.2f} h "
        f"(greedy list schedule, longest ready job first; lower bound {total / n_gpus:.2f} h)",
    ]
    lines += [f"note: {n}" for n in est.notes]
    return "\n".join(lines)
