"""Reliability, proven with the real snakemake: bad input, interrupted jobs, damaged cache, safe loading.

Budget (2 CPU cores): the session's ``demo_run`` is the reference and is only ever copied;
the bad-data run uses one defect per category and one detector; the interrupted run is the
e2e demo restricted to one category (its keyed paths are the same as in ``demo_run``, so
its artifacts are compared file by file). Every snakemake here leases device slots in a
private lock folder (``reliability_utils.private_env``), so it never waits for other runs
on the machine.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anogen.config import validate_config
from anogen.data.demo import demo_layout
from anogen.evaluation.summary import summarize
from anogen.io import rebuild_command, sha256_file, verify_manifest
from anogen.plan import Plan
from tests import e2e
from tests import reliability_utils as ru

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

REPO = e2e.REPO
CATEGORY = "brick_gray"  # the category of the interrupted run and of the damaged-cache test


def demo_plan(extra: dict | None = None) -> Plan:
    cfg = validate_config(e2e.e2e_config(extra))
    return Plan(cfg, layout=demo_layout(cfg["demo"]))


def keyed(workdir: Path, *parts: str) -> Path:
    return workdir / "results" / Path(*parts)


# ============================================================================ 1. bad data

BAD_SOURCE = "grass_texture"  # demo category copied under new names
BAD_DEFECT = "hole"


def _make_bad_data_root(demo_run: Path, root: Path) -> dict:
    """Five copies of one demo category: one untouched, four each broken in one way."""
    src = demo_run / "resources" / "demo_mvtec" / BAD_SOURCE
    names = ["untouched", "truncated_train", "missing_mask", "few_shots", "wrong_mask_size"]
    for name in names:
        shutil.copytree(src, root / name)
    bad: dict[str, Path] = {}

    # (a) a truncated PNG among the normal training images
    path = root / "truncated_train" / "train" / "good" / "003.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    bad["truncated_train"] = path

    # (b) an anomalous test image without its ground-truth mask
    path = root / "missing_mask" / "ground_truth" / BAD_DEFECT / "001_mask.png"
    path.unlink()
    bad["missing_mask"] = path

    # (c) fewer images of the defect type than support.shots (3)
    test_dir = root / "few_shots" / "test" / BAD_DEFECT
    for name in ("002.png", "003.png"):
        (test_dir / name).unlink()
    bad["few_shots"] = test_dir

    # (d) a mask whose size differs from its image
    path = root / "wrong_mask_size" / "ground_truth" / BAD_DEFECT / "002_mask.png"
    Image.open(path).resize((40, 40), Image.Resampling.NEAREST).save(path)
    bad["wrong_mask_size"] = path
    return {"names": names, "bad": bad}


def test_bad_data_fails_only_the_broken_categories_and_names_the_file(demo_run, tmp_path):
    data = _make_bad_data_root(demo_run, tmp_path / "data")
    names, bad = data["names"], data["bad"]
    config = e2e.e2e_config(
        {
            "data_root": str(tmp_path / "data"),
            "defects": {name: [BAD_DEFECT] for name in names},
            "detectors": {"models": ["draem"], "variants": ["anogen"]},
        }
    )
    work = e2e.make_workdir(tmp_path / "work", config=config)
    # The tiny model is data-independent: reuse demo_run's instead of rebuilding it.
    shutil.copytree(demo_run / "resources" / "models", work / "resources" / "models")
    env = ru.private_env(tmp_path / "locks")

    proc = ru.run(work, "--keep-going", "--show-failed-logs", env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    results = work / "results"

    # Each failing job names the file and the problem, in its own log and on the console.
    expected = {
        ("estimate_foreground", "truncated_train"): [str(bad["truncated_train"]), "truncated"],
        ("select_support", "missing_mask"): [
            str(bad["missing_mask"].parents[2] / "test" / BAD_DEFECT / "001.png"),
            "has no mask",
            f"expected {bad['missing_mask']}",
        ],
        ("select_support", "few_shots"): [str(bad["few_shots"]), "has 2 image(s) but support.shots = 3"],
        ("select_support", "wrong_mask_size"): [str(bad["wrong_mask_size"]), "mask size 40x40 differs from its image"],
    }
    for (rule, category), needles in expected.items():
        sub = category if rule == "estimate_foreground" else f"{category}/{BAD_DEFECT}"
        logs = list((results / "logs" / rule).glob(f"{sub}/*.log"))
        assert len(logs) == 1, (rule, category, logs)
        text = logs[0].read_text()
        for needle in needles:
            assert needle in text, (rule, category, needle, text[-3000:])
        assert f"anogen error in rule {rule}: {needles[0]}" in out, (rule, category)
        # README: Snakemake names the failed job's log, and --show-failed-logs prints it.
        assert str(logs[0].relative_to(work)) in out, (rule, category)
        assert f"ERROR anogen.jobs: {needles[0]}" in out, (rule, category)

    # Exactly those jobs failed: a broken test mask does not fail the stages that only read
    # the normal training images.
    failed = {
        log.relative_to(results / "logs").parts[:2]
        for log in (results / "logs").rglob("*.log")
        if " ERROR " in log.read_text()
    }
    assert failed == set(expected), failed

    # The untouched category ran to its evaluation.
    metrics = list(results.glob("evaluation/untouched/draem/anogen/*/metrics.json"))
    assert len(metrics) == 1 and (metrics[0].parent / "manifest.json").is_file()
    assert json.loads(metrics[0].read_text())["category"] == "untouched"

    # Nothing a later run could take as done: no manifest where a job failed or never ran.
    broken = [n for n in names if n != "untouched"]
    for category in broken:
        for stage in ("generated", "detectors", "evaluation"):
            assert not list(results.glob(f"{stage}/{category}/**/manifest.json")), (stage, category)
    for category in ("missing_mask", "few_shots", "wrong_mask_size"):
        assert not list(results.glob(f"support/{category}/**/manifest.json")), category
        assert not list(results.glob(f"embeddings/{category}/**/manifest.json")), category
    assert not list(results.glob("foreground/truncated_train/**/manifest.json"))
    assert not (results / "summary.csv").exists()

    # ... and a dry run plans exactly the failed jobs and what depends on them again (plus the
    # foreground jobs of broken categories, which Snakemake may skip once nothing can use them).
    fg_done = {c for c in names if list(results.glob(f"foreground/{c}/*/manifest.json"))}
    assert "untouched" in fg_done and "truncated_train" not in fg_done
    planned = e2e.planned_jobs(work)
    assert planned == {
        "select_support": 3,
        "estimate_foreground": len(names) - len(fg_done),
        "learn_embedding": 3,
        "generate_anomalies": 4,
        "train_detector": 4,
        "evaluate_detector": 4,
        "summarize": 1,
        "all": 1,
    }, planned


# ============================================================================ 2. bad config

BAD_CONFIGS = {
    "unknown_key": ({"embedding": {"stepz": 5}}, "embedding.stepz"),
    "unknown_top_level_key": ({"detector": {"tau": 0.5}}, "detector"),
    "wrong_type": ({"embedding": {"steps": "ten"}}, "embedding.steps"),
    "negative_count": ({"generation": {"images_per_box": -1}}, "generation.images_per_box"),
    "negative_shots": ({"support": {"shots": -3}}, "support.shots"),
    "tau_above_1": ({"detectors": {"tau": 1.5}}, "detectors.tau"),
    "tau_below_0": ({"detectors": {"tau": -0.1}}, "detectors.tau"),
    "category_with_separator": ({"categories": ["a/b"]}, "categories.0"),
    "category_dotdot": ({"categories": ["../escape"]}, "categories.0"),
    "category_inner_dotdot": ({"categories": ["x..y"]}, "categories.0"),
    "defect_dotdot": ({"defects": {"nut_object": ["../../etc"]}}, "defects.nut_object.0"),
    "defects_key_separator": ({"defects": {"a/b": "all"}}, "defects"),
    "box_range_category_dotdot": (
        {"generation": {"box_ranges": {"..": {"crack": {"width": [0.1, 0.2], "height": [0.1, 0.2]}}}}},
        "generation.box_ranges",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_stops_before_any_job(case, tmp_path):
    change, key = BAD_CONFIGS[case]
    work = e2e.make_workdir(tmp_path / "work", change)
    proc = e2e.run(work, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"invalid configuration: config key '{key}'" in out, out[-3000:]
    assert not (work / "results").exists() and not (work / "resources").exists()


# ============================================================================ 3 + 6. interrupted runs


def _generation_batch(config: dict) -> int:
    return int(config["generation"]["batch_size"])


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """The e2e demo from scratch (one category), SIGKILLed with all its jobs three times.

    Kills land while a learn_embedding job is between checkpoints, while generate_anomalies
    is between two batches, and while train_detector is between checkpoints; each time the
    run is resumed as README.md says. Returns the workdir and what was interrupted.
    """
    base = tmp_path_factory.mktemp("interrupted")
    config = e2e.e2e_config({"categories": [CATEGORY]})
    work = e2e.make_workdir(base / "work", config=config)
    env = ru.private_env(base / "locks")
    log = base / "snakemake.out"
    results = work / "results"
    batch = _generation_batch(config)

    def fresh(paths: list[Path], since: float) -> list[Path]:
        return [p for p in paths if p.stat().st_mtime >= since]

    def embedding_midway(since):
        def check():
            dirs = ru.unfinished(results, "embeddings", "checkpoints/state.pt")
            return [d for d in dirs if (d / "checkpoints" / "state.pt").stat().st_mtime >= since]

        return check

    def generation_between_batches(since):
        def check():
            dirs = [d for d in ru.keyed_dirs(results, "generated") if not (d / "manifest.json").exists()]
            counts = {d: len(set(ru.progress_names(d))) for d in dirs}
            if any(list(d.glob("*/.*.tmp")) for d in dirs):
                return None  # an image is being written right now
            started = fresh([d / "progress.jsonl" for d, n in counts.items() if n > 0], since)
            if started and all(n % batch == 0 for n in counts.values()):
                return [p.parent for p in started]
            return None

        return check

    def detector_midway(since):
        def check():
            dirs = ru.unfinished(results, "detectors", "checkpoints/state.pt")
            return [d for d in dirs if (d / "checkpoints" / "state.pt").stat().st_mtime >= since]

        return check

    phases = [
        ("learn_embedding", embedding_midway),
        ("generate_anomalies", generation_between_batches),
        ("train_detector", detector_midway),
    ]
    interrupted: dict[str, list[Path]] = {}
    partial_batches: dict[Path, set[int]] = {}  # generation dir -> indices of batches cut by a kill
    for i, (rule, condition) in enumerate(phases):
        since = time.time() - 1  # file mtimes have coarse resolution on some file systems
        args = ["--resources", "gpu=2"] + (["--rerun-incomplete"] if i else [])
        proc = ru.start(work, *args, env=env, log=log)
        dirs = ru.wait_for(proc, condition(since), f"{rule} midway", log)
        members = ru.kill_group(proc)
        assert len(members) >= 2, "snakemake's job processes were not in its process group"
        for d in dirs:
            assert not (d / "manifest.json").exists()
        interrupted[rule] = dirs
        # A kill that lands while a batch is being written leaves part of a batch; the rest is
        # then sampled in a smaller batch, which on CPU is not bit-identical (float round-off).
        for d in ru.keyed_dirs(results, "generated"):
            if not (d / "manifest.json").exists():
                n = len(set(ru.progress_names(d)))
                if n % batch:
                    partial_batches.setdefault(d, set()).add(n // batch)
        if i == 0:
            # README: after a hard kill the lock stays; snakemake says to --unlock first.
            locked = ru.run(work, "--rerun-incomplete", env=env, check=False)
            assert locked.returncode != 0 and "--unlock" in locked.stderr, locked.stderr[-3000:]
        ru.run(work, "--unlock", env=env)
    ru.run(work, "--resources", "gpu=2", "--rerun-incomplete", env=env)
    return {"work": work, "interrupted": interrupted, "partial_batches": partial_batches, "batch": batch}


def test_interrupted_run_resumes_to_the_uninterrupted_outputs(interrupted_run, demo_run):
    work = interrupted_run["work"]
    results = work / "results"

    # The kills really interrupted those jobs, and their reruns continued from the saved state.
    for d in interrupted_run["interrupted"]["learn_embedding"]:
        assert re.search(r"resuming from \S+ at step [1-9]", ru.log_text(work, "learn_embedding", d))
    for d in interrupted_run["interrupted"]["generate_anomalies"]:
        assert re.search(
            r"resuming: [1-9]\d* of \d+ images already generated", ru.log_text(work, "generate_anomalies", d)
        )
    for d in interrupted_run["interrupted"]["train_detector"]:
        assert re.search(r"resuming from \S+ at step [1-9]", ru.log_text(work, "train_detector", d))
        # The training log keeps the rows from before the kill: every step exactly once.
        steps = json.loads((d / "manifest.json").read_text())["extra"]["steps"]
        with open(d / "train_log.csv", newline="") as fh:
            assert [int(row["step"]) for row in csv.DictReader(fh)] == list(range(1, steps + 1)), d

    # Nothing left unfinished, nothing left to do.
    assert e2e.planned_jobs(work) == {}
    for manifest in results.glob("*/**/manifest.json"):
        verify_manifest(manifest)

    # Bit-identical to the uninterrupted demo_run: embeddings, every generated image and mask,
    # detector weights, metrics.
    ours, reference = ru.digests(work), ru.digests(demo_run, [CATEGORY])
    plan = demo_plan({"categories": [CATEGORY]})
    n_pairs, n_runs = len(plan.pairs()), len(plan.detector_runs())
    assert sum(k.startswith("embeddings/") for k in reference) == n_pairs
    assert sum(k.startswith("detectors/") for k in reference) == n_runs
    assert sum(k.startswith("evaluation/") for k in reference) == n_runs
    assert ours.keys() == reference.keys()
    batch = interrupted_run["batch"]
    round_off = set()
    for d, chunks in interrupted_run["partial_batches"].items():
        items = json.loads((d / "manifest.json").read_text())["extra"]["items"]
        for k in chunks:
            round_off |= {
                (d / it["image"]).relative_to(results).as_posix() for it in items[k * batch : (k + 1) * batch]
            }
    differ = sorted(k for k in ours if ours[k] != reference[k])
    if not round_off:
        assert not differ, f"differ from the uninterrupted run: {differ}"
        return
    # A kill that landed while a batch was being written (rare: the kill waits for a batch
    # boundary) leaves part of that batch; the rest is sampled as a smaller batch, which on
    # CPU agrees only to float round-off (the stage's documented contract), and the weakly
    # supervised detectors trained on those images then differ as well. Everything else
    # must still be identical.
    downstream = re.compile(rf"^(detectors|evaluation)/{CATEGORY}/[^/]+/(anogen|generated_only)/")
    unexplained = [k for k in differ if k not in round_off and not downstream.match(k)]
    assert not unexplained, f"differ from the uninterrupted run: {unexplained}"
    for rel in set(differ) & round_off:
        a = np.asarray(Image.open(results / rel), dtype=int)
        b = np.asarray(Image.open(demo_run / "results" / rel), dtype=int)
        assert np.abs(a - b).max() <= 2, rel


def test_two_runs_from_scratch_give_identical_summaries(interrupted_run, demo_run, tmp_path):
    """demo_run and the (interrupted, resumed) run both started from nothing, same seeds.

    The second run covers one category, so its summary.csv is compared (a) row by row with
    demo_run's rows of that category and (b) byte for byte with the summary that the same
    code writes from demo_run's metrics of that category.
    """
    work = interrupted_run["work"]
    ours = (work / "results" / "summary.csv").read_text()
    reference = (demo_run / "results" / "summary.csv").read_text()
    rows = [line for line in ours.splitlines()[1:] if line.split(",")[0] == CATEGORY]
    ref_rows = [line for line in reference.splitlines()[1:] if line.split(",")[0] == CATEGORY]
    assert len(rows) == len(demo_plan({"categories": [CATEGORY]}).detector_runs())
    if interrupted_run["partial_batches"]:
        # Rare: a kill inside a generation batch (see the resume test) changes the generated
        # images by float round-off, hence the weakly supervised detectors: baselines only.
        baseline = [r for r in rows if r.split(",")[2] == "baseline"]
        assert baseline and baseline == [r for r in ref_rows if r.split(",")[2] == "baseline"]
        return
    assert rows == ref_rows

    metrics = sorted((demo_run / "results" / "evaluation" / CATEGORY).glob("*/*/*/metrics.json"))
    summarize(metrics, tmp_path / "summary.csv", tmp_path / "table1.csv")
    assert ours == (tmp_path / "summary.csv").read_text()
    assert (work / "results" / "table1.csv").read_text() == (tmp_path / "table1.csv").read_text()


# ============================================================================ 4. cached artifacts

BOOKKEEPING = re.compile(r"^(checkpoints/.*|progress\.jsonl|examples/\.snakemake_timestamp)$")


def test_every_manifest_records_the_sha256_of_every_file(demo_run):
    results = demo_run / "results"
    manifests = sorted(results.glob("*/**/manifest.json"))
    stages = {m.relative_to(results).parts[0] for m in manifests}
    assert stages == {"support", "foreground", "embeddings", "generated", "detectors", "evaluation"}
    for manifest_path in manifests:
        directory = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        assert manifest["key"] == directory.name
        on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
        unlisted = {f for f in on_disk - set(manifest["files"]) - {"manifest.json"} if not BOOKKEEPING.match(f)}
        assert not unlisted, (directory, unlisted)
        for rel, record in manifest["files"].items():
            assert record["sha256"] == sha256_file(directory / rel), (directory, rel)
            assert record["bytes"] == (directory / rel).stat().st_size


def _rebuild_line(output: str, manifest: Path, workdir: Path) -> str:
    """The 'To rebuild it:' command of an IntegrityError; it must be rebuild_command(manifest)."""
    rel = manifest.relative_to(workdir)
    expected = f"To rebuild it: {rebuild_command(rel)}"
    assert expected in output, output[-4000:]
    return rebuild_command(rel).split("   (")[0]


def _run_rebuild(workdir: Path, command: str, env: dict) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "snakemake"
    return ru.run(workdir, *argv[1:], env=env)


def _damage(path: Path, how: str) -> None:
    """Truncate or edit a file in place, keeping its mtime (silent corruption, not a newer input)."""
    st = path.stat()
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_damaged_cached_files_are_named_with_the_rebuild_command(demo_run, tmp_path):
    work = e2e.copy_tree(demo_run, tmp_path / "work")
    env = ru.private_env(tmp_path / "locks")
    plan = demo_plan()
    d_gen, d_emb = plan.defects(CATEGORY)[:2]
    gen_dir = keyed(work, "generated", CATEGORY, d_gen, plan.key("generation", CATEGORY, d_gen))
    emb_dir = keyed(work, "embeddings", CATEGORY, d_emb, plan.key("embedding", CATEGORY, d_emb))
    det_dir = keyed(work, "detectors", CATEGORY, "draem", "anogen", plan.key("detector", CATEGORY, "draem", "anogen"))
    gen2_dir = keyed(work, "generated", CATEGORY, d_emb, plan.key("generation", CATEGORY, d_emb))
    image = sorted((gen_dir / "images").glob("*.png"))[5]
    embedding = emb_dir / "learned_embeds.safetensors"
    reference_embedding = sha256_file(embedding)

    # A truncated generated image: the detector that trains on it stops and names it.
    _damage(image, "truncate")
    proc = ru.run(work, "--force", str((det_dir / "manifest.json").relative_to(work)), env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"anogen error in rule train_detector: {image.relative_to(work)}: sha256 " in out, out[-4000:]
    assert "the cached file was truncated or edited" in out
    fix_image = _rebuild_line(out, gen_dir / "manifest.json", work)
    assert not (det_dir / "manifest.json").exists()

    # An edited learned embedding: the generation that reads it stops and names it.
    _damage(embedding, "edit")
    proc = ru.run(work, "--force", str((gen2_dir / "manifest.json").relative_to(work)), env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"anogen error in rule generate_anomalies: {embedding.relative_to(work)}: sha256 " in out, out[-4000:]
    assert "the cached file was truncated or edited" in out
    fix_embedding = _rebuild_line(out, emb_dir / "manifest.json", work)
    assert not (gen2_dir / "manifest.json").exists()

    # The printed commands rebuild exactly those artifacts ...
    _run_rebuild(work, fix_image, env)
    verify_manifest(gen_dir / "manifest.json")
    assert "resuming: " in ru.log_text(work, "generate_anomalies", gen_dir)  # only the damaged image redone
    _run_rebuild(work, fix_embedding, env)
    verify_manifest(emb_dir / "manifest.json")
    assert sha256_file(embedding) == reference_embedding  # rebuilt from its final checkpoint

    # ... after which the usual command completes the workflow again.
    ru.run(work, env=env)
    assert e2e.planned_jobs(work) == {}
    for manifest in (work / "results").glob("*/**/manifest.json"):
        verify_manifest(manifest)


# ============================================================================ 5. safe loading

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _python_sources() -> list[Path]:
    files = sorted((REPO / "anogen").rglob("*.py")) + sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert len(files) > 30
    return files


def test_no_pickle_and_torch_load_only_with_weights_only():
    torch_loads = 0
    problems = []
    for path in _python_sources():
        rel = path.relative_to(REPO)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in PICKLE_MODULES:
                        problems.append(f"{rel}:{node.lineno} imports {alias.name}")
            elif isinstance(node, ast.ImportFrom):
                if (node.module or "").split(".")[0] in PICKLE_MODULES:
                    problems.append(f"{rel}:{node.lineno} imports from {node.module}")
                if node.module == "torch" and any(a.name == "load" for a in node.names):
                    problems.append(f"{rel}:{node.lineno} imports torch.load by name")
            elif isinstance(node, ast.Attribute) and node.attr in ("load", "unsafe_load", "full_load"):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if owner == "yaml":
                    problems.append(f"{rel}:{node.lineno} yaml.{node.attr} (use yaml.safe_load)")
            elif isinstance(node, ast.Call):
                func = node.func
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "load"
                    and isinstance(func.value, ast.Name)
                    and func.value.id == "torch"
                ):
                    torch_loads += 1
                    kw = {k.arg: k.value for k in node.keywords}
                    value = kw.get("weights_only")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        problems.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
                if any(
                    k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                    for k in node.keywords
                ):
                    problems.append(f"{rel}:{node.lineno} allow_pickle")
    # Rules and the Snakefile are not plain Python: a text check.
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        if re.search(r"\bpickle\b|torch\.load\(", text):
            problems.append(f"{path.relative_to(REPO)} mentions pickle or torch.load")
    assert not problems, "\n".join(problems)
    assert torch_loads >= 2  # checkpoints and DeSTSeg's teacher weights: the scan sees them


UNSAFE_FOLDERS = {
    "category_dotdot": ("bad..cat", None, "category folder name 'bad..cat' is not allowed"),
    "category_backslash": ("a\\b", None, "category folder name 'a\\\\b' is not allowed"),
    "category_space": ("my cat", None, "category folder name 'my cat' is not allowed"),
    "defect_dotdot": ("good_cat", "x..y", "defect folder name 'x..y' is not allowed"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_FOLDERS))
def test_data_folder_names_that_would_escape_results_are_rejected(case, tmp_path):
    category, defect, message = UNSAFE_FOLDERS[case]
    root = tmp_path / "data"
    for name in ("good_cat", category):
        (root / name / "train" / "good").mkdir(parents=True, exist_ok=True)
        (root / name / "test" / "crack").mkdir(parents=True, exist_ok=True)
    if defect:
        (root / category / "test" / defect).mkdir()
    work = e2e.make_workdir(tmp_path / "work", {"data_root": str(root)})
    proc = e2e.run(work, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out, out[-3000:]
    bad = root / category / "test" / defect if defect else root / category
    assert f"invalid configuration: {bad}: " in out
    assert not (work / "results").exists()
    assert not list(tmp_path.rglob("results"))  # nothing written anywhere, inside or outside
