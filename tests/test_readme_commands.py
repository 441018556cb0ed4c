"""The commands of the README and of docs/*.md, run as written: every `snakemake` line of their code
blocks is dry-run in a fresh copy of the checkout (with `data_root` pointing at a fake MVTec-layout tree
with the real 15 category and 73 defect names where the command needs real data, or a fake VisA tree),
and its plan checked; every `anogen` line is run (`local.yaml`, as the README's printf writes it, among
its config files). The pages share one checkout, the README first, so a page may use a file the
README's printf wrote.

A command of these pages that this test does not know how to exercise fails it, so a command
added to them later is tested too (or the test is taught what it is).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anogen.config import deep_update, validate_config
from anogen.options import run_config
from anogen.plan import Plan
from tests import e2e

pytestmark = pytest.mark.e2e

README = e2e.REPO / "README.md"
DOCS = e2e.REPO / "docs"
# Pages whose commands are not run here, and the test that runs them instead.
NOT_RUN_HERE = {
    "slurm.md": "a root-only recipe that installs and starts Slurm daemons: tests/slurm_cluster.py follows it (-m slurm)",
}
DATA_PLACEHOLDER = "/path/to/mvtec_anomaly_detection"
VISA_PLACEHOLDER = "/path/to/VisA_20220922"
MODEL_PLACEHOLDER = "/path/to/ldm-text2im-large-256"
DTD_PLACEHOLDER = "/path/to/dtd/images"
AUTHORS_PLACEHOLDER = "/path/to/AnoGen"
REAL_MODEL = "CompVis/ldm-text2im-large-256"
CHECKOUT = ("Snakefile", "workflow", "config", "envs", "profiles", "bench")


# ----------------------------------------------------------------------------- reading the README


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)


def statements(block: str) -> list[str]:
    """Shell statements of a block: continuation lines joined, comments dropped, split at &&."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()  # README commands keep '#' out of quotes
        out += [part.strip() for part in line.split(" && ") if part.strip()]
    return [" ".join(s.split()) if not s.startswith("printf") else s for s in out]


def page_statements(page: Path) -> list[str]:
    return [s for block in code_blocks(page.read_text(encoding="utf-8")) for s in statements(block)]


def readme_statements() -> list[str]:
    return page_statements(README)


def user_doc_pages() -> list[Path]:
    """The README, then every docs page whose commands this test runs."""
    return [README, *(page for page in sorted(DOCS.glob("*.md")) if page.name not in NOT_RUN_HERE)]


def doc_statements() -> list[tuple[str, str]]:
    """(page, statement) for every command of the pages, in reading order."""
    return [(page.name, s) for page in user_doc_pages() for s in page_statements(page)]


def test_statement_splitting():
    block = "bash tools/setup.sh && .venv/bin/snakemake --cores all   # run\n.venv/bin/x \\\n    --a b\n"
    assert statements(block) == ["bash tools/setup.sh", ".venv/bin/snakemake --cores all", ".venv/bin/x --a b"]


# ----------------------------------------------------------------------------- a fresh checkout


@pytest.fixture(scope="module")
def fake_mvtec(tmp_path_factory) -> Path:
    """An MVTec-AD-layout tree with the real category and defect names (a few tiny images each)."""
    from tests.fake_trees import build_fake_mvtec

    # 6 per folder: MVTec's smallest defect folder has more than 5, which the paper study's k = 5 arm takes
    return build_fake_mvtec(tmp_path_factory.mktemp("mvtec") / "mvtec_anomaly_detection", per_folder=6)


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory) -> Path:
    """A local copy of the LDM as published (tiny weights): what `anogen preflight` reads of it."""
    from anogen.provenance import RANDOM_MODEL_MARKER
    from tests.hub_fixtures import published_model

    folder = published_model("ldm", tmp_path_factory.mktemp("model") / "ldm-text2im-large-256")
    (folder / RANDOM_MODEL_MARKER).unlink()  # a copy of the real weights carries no random-model marker
    return folder


@pytest.fixture(scope="module")
def places(tmp_path_factory, fake_mvtec, fake_model) -> dict[str, Path]:
    """What each placeholder of the pages stands for here: small stand-ins a test can plan against."""
    from tests.fake_trees import _png, build_fake_authors_repo
    from tests.preset_trees import make_visa_preset_tree

    dtd = tmp_path_factory.mktemp("dtd") / "images"
    (dtd / "banded").mkdir(parents=True)
    for i in range(3):
        (dtd / "banded" / f"banded_{i:04d}.jpg").write_bytes(_png(40 * i))
    authors = build_fake_authors_repo(tmp_path_factory.mktemp("authors") / "AnoGen", fake_mvtec)
    return {
        DATA_PLACEHOLDER: fake_mvtec,
        MODEL_PLACEHOLDER: fake_model,
        DTD_PLACEHOLDER: dtd,
        AUTHORS_PLACEHOLDER: authors,
        VISA_PLACEHOLDER: make_visa_preset_tree(tmp_path_factory.mktemp("visa") / "VisA_20220922"),
    }


def substitute(statement: str, places: dict[str, Path]) -> str:
    for placeholder, path in places.items():
        statement = statement.replace(placeholder, str(path))
    return statement


def fresh_checkout(path: Path) -> Path:
    import shutil

    path.mkdir(parents=True)
    for name in CHECKOUT:
        source = e2e.REPO / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, path / name)
    (path / "anogen").symlink_to(e2e.REPO / "anogen", target_is_directory=True)
    (path / ".venv").symlink_to(Path(sys.executable).resolve().parents[1], target_is_directory=True)
    return path


def dry_run(checkout: Path, statement: str, places: dict[str, Path]) -> subprocess.CompletedProcess:
    words = shlex.split(substitute(statement, places))
    assert words[0] == ".venv/bin/snakemake", statement
    # The venv's snakemake as written, run through this interpreter (the symlinked venv's
    # entry-point scripts carry the CI clone's absolute shebang).
    cmd = [sys.executable, "-m", "snakemake", "-n", *words[1:]]
    return subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=900, env=e2e.env())


def planned(stdout: str) -> tuple[collections.Counter, dict[str, list[str]]]:
    """Jobs per rule and, per rule, the output paths of its planned jobs."""
    counts: collections.Counter = collections.Counter()
    outputs: dict[str, list[str]] = collections.defaultdict(list)
    rule = None
    for line in stdout.splitlines():
        m = re.match(r"(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            counts[rule] += 1
        elif rule and line.strip().startswith("output:"):
            outputs[rule] += [p.strip() for p in line.split(":", 1)[1].split(",")]
    return counts, outputs


def config_of(statement: str, checkout: Path, places: dict[str, Path]) -> dict:
    """The validated config of the statement's --configfile files and --config pairs, as every
    `anogen` command builds it (anogen.options); the planned keys check it is the workflow's."""
    words = shlex.split(substitute(statement, places))
    files, pairs, mode = [], [], None
    for word in words[1:]:
        if word.startswith("-"):
            mode = word
            continue
        if mode in ("--configfile", "--configfiles"):
            files.append(word)
        elif mode == "--config":
            pairs.append(word)
    with contextlib.chdir(checkout):  # config files and `extends:` paths are relative to it
        return run_config(files, pairs)


def expected_manifests(plan: Plan) -> dict[str, set[str]]:
    r = plan.config["results_dir"]
    pairs, runs = plan.pairs(), plan.detector_runs()
    return {
        "select_support": {f"{r}/support/{c}/{d}/{plan.key('support', c, d)}/manifest.json" for c, d in pairs},
        "learn_embedding": {f"{r}/embeddings/{c}/{d}/{plan.key('embedding', c, d)}/manifest.json" for c, d in pairs},
        "generate_anomalies": {f"{r}/generated/{c}/{d}/{plan.key('generation', c, d)}/manifest.json" for c, d in pairs},
        "train_detector": {
            f"{r}/detectors/{c}/{m}/{v}/{plan.key('detector', c, m, v)}/manifest.json" for c, m, v in runs
        },
        "evaluate_detector": {
            f"{r}/evaluation/{c}/{m}/{v}/{plan.key('evaluation', c, m, v)}/manifest.json" for c, m, v in runs
        },
    }


# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, fake_model) -> Path:
    """What `hf download CompVis/ldm-text2im-large-256` leaves: the published layout (tiny weights) in
    the HF cache, read offline (e2e.env sets HF_HUB_OFFLINE=1)."""
    from tests.hub_fixtures import install_in_hub_cache

    cache = tmp_path_factory.mktemp("hub") / "cache"
    install_in_hub_cache(fake_model, REAL_MODEL, cache)
    return cache


def run_anogen(checkout: Path, statement: str, places: dict[str, Path], hub_cache: Path) -> subprocess.CompletedProcess:
    """``.venv/bin/anogen ...`` as written (through this interpreter, see dry_run), after the README's
    `hf download` (the hub cache above)."""
    words = shlex.split(substitute(statement, places))
    cmd = [sys.executable, "-m", "anogen.cli", *words[1:]]
    env = {**e2e.env(), "HF_HUB_CACHE": str(hub_cache)}
    return subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=900, env=env)


def run_bench(checkout: Path, statement: str, places: dict[str, Path]) -> subprocess.CompletedProcess:
    """``NAME=value .venv/bin/python bench/<script>.py ...`` as written (through this interpreter)."""
    words = shlex.split(substitute(statement, places))
    assignments = list(itertools.takewhile(lambda w: re.fullmatch(r"[A-Z_]+=\S*", w), words))
    words = words[len(assignments) :]
    assert words[0] == ".venv/bin/python" and words[1].startswith("bench/"), statement
    env = {**e2e.env(), **dict(a.split("=", 1) for a in assignments)}
    return subprocess.run(
        [sys.executable, *words[1:]], cwd=checkout, capture_output=True, text=True, timeout=900, env=env
    )


def expected_pairs(statement: str) -> int:
    """The (category, defect) pairs of the data the statement names: VisA's 12 categories, one defect
    type each, or MVTec AD's 73 (72 in the authors' preset, without metal_nut/flip)."""
    if VISA_PLACEHOLDER in statement:
        return 12
    return 72 if "mvtec-authors" in statement else 73


STAGE_TARGETS = {
    "support": "select_support",
    "embeddings": "learn_embedding|import_embedding",
    "generated": "generate_anomalies",
    "detectors": "train_detector",
    "evaluation": "evaluate_detector",
}


def check_full_run(statement: str, words: list[str], counts, outputs, text: str, config: dict, places) -> None:
    """A real run: no demo job, the named model, one job per (category, defect), this config's keys."""
    plan = Plan(config)
    assert "demo_data" not in counts and "tiny_model" not in counts, (statement, counts)
    assert "random diffusion model" not in text, statement
    model = config["diffusion"]["model"]
    assert model in (REAL_MODEL, str(places[MODEL_PLACEHOLDER])), model
    assert f"anogen: diffusion model {model};" in text
    n_pairs = len(plan.pairs())
    assert n_pairs == expected_pairs(statement), n_pairs
    embedding_rule = "import_embedding" if config["embedding"]["source"] == "authors" else "learn_embedding"
    targets = [w for w in words[1:] if w in STAGE_TARGETS]
    if targets:  # stage targets: their rules and nothing downstream
        assert set(counts) == {*targets, "select_support", embedding_rule} or "generated" in targets, counts
    for rule in ("select_support", embedding_rule, "generate_anomalies"):
        if not targets or rule in counts:
            assert counts[rule] == n_pairs, (statement, rule, counts)
    # The keys of every planned artifact are those of exactly this config over the schema
    # defaults: no value of the demo's config reached the run.
    for rule, expected in expected_manifests(plan).items():
        got = {p for p in outputs.get(rule, []) if p.endswith("manifest.json")}
        if rule == "learn_embedding":
            got |= {p for p in outputs.get("import_embedding", []) if p.endswith("manifest.json")}
        if got:
            assert got == expected, (statement, rule, sorted(got ^ expected)[:4])


STUDY_RULES = {
    "support": "select_support",
    "foreground": "estimate_foreground",
    "embedding": "learn_embedding",
    "generation": "generate_anomalies",
    "detector": "train_detector",
    "evaluation": "evaluate_detector",
}


def stated_study_counts() -> dict[str, int]:
    """The jobs per rule docs/studies.md's table states for the paper study (its rows `| `rule` | n | why |`)."""
    text = (DOCS / "studies.md").read_text(encoding="utf-8")
    section = text[text.index("## Jobs per rule") :]
    section = section[: section.index("\n## ", 3)]
    rows = re.findall(r"^\| `(\w+)` \| (\d[\d,]*) \|", section, flags=re.M)
    return {rule: int(n.replace(",", "")) for rule, n in rows}


def check_study_run(statement: str, counts, config: dict) -> None:
    """A study target plans each distinct artifact of its arms once (anogen.studies.planner), and for the
    paper study exactly the counts of docs/studies.md."""
    from anogen.studies.planner import RunPlan

    run = RunPlan(config)
    names = [w[len("study_") :] for w in shlex.split(statement) if w.startswith("study_")] or list(run.studies)
    distinct = collections.Counter(stage for stage, _, _ in run.study_artifacts(names))
    for stage, rule in STUDY_RULES.items():
        assert counts[rule] == distinct[stage], (statement, rule, counts[rule], distinct[stage])
    assert counts["study_table"] == len(names), (statement, counts)
    if "mvtec-paper-study" in statement:
        # the DTD folder reaches every arm (else DRAEM's synthetic anomalies come from the fallback photographs)
        assert config["detectors"]["texture_source"] and Path(config["detectors"]["texture_source"]).is_dir(), statement
        stated = stated_study_counts()
        assert len(stated) == len(STUDY_RULES), stated
        assert {rule: counts[rule] for rule in stated if rule != "study_table"} == {
            rule: n for rule, n in stated.items() if rule != "study_table"
        }, (stated, counts)
        assert counts["paper"] == 1 and sum(counts.values()) == 1705, counts


def test_every_readme_command_plans_what_it_says(tmp_path, places, hub_cache):
    checked = collections.Counter()
    checkout = fresh_checkout(tmp_path / "checkout")
    for page, statement in doc_statements():
        words = shlex.split(statement)
        if statement == "bash tools/setup.sh":
            checked["setup"] += 1  # what .ci/run runs before this suite
            continue
        if words[:2] == [".venv/bin/python", "-m"] and words[2] == "pytest":
            checked["pytest"] += 1  # this suite
            continue
        if words[:2] == [".venv/bin/hf", "download"]:
            # No network here: the command and its arguments must still be what hf accepts.
            assert words[2] == REAL_MODEL, statement
            proc = subprocess.run(
                [str(Path(sys.executable).parent / "hf"), "download", "--help"], capture_output=True, text=True
            )
            assert proc.returncode == 0, proc.stderr
            checked["hf"] += 1
            continue
        if words[:2] == ["bash", "bench/device/fetch_wheels.sh"]:
            # as written, in this checkout: every carried wheel exists for the GPU machine's Python
            proc = subprocess.run(words, cwd=e2e.REPO, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            wheels = sorted(p.name for p in (e2e.REPO / ".whl").glob("*.whl"))
            assert any("-cp312-" in w for w in wheels) and any(w.startswith("snakemake-") for w in wheels), wheels
            checked["device wheels"] += 1
            continue
        if words[:2] == ["bash", "bench/device/run_check.sh"]:
            # as written, on this machine without a GPU: it stops with the reason (its --cpu --tiny
            # form is tests/test_gpu_check.py); the wheels above are for Python 3.12, so not here
            env = {**os.environ, "OUT": str(tmp_path / "device-out"), "ANOGEN_WHEELS": str(tmp_path)}
            if __import__("torch").cuda.is_available():
                checked["device check"] += 1  # a GPU here: the check itself would run for minutes
                continue
            proc = subprocess.run(words, cwd=e2e.REPO, capture_output=True, text=True, timeout=300, env=env)
            assert proc.returncode == 2 and "no CUDA device" in proc.stdout, proc.stdout[-3000:]
            checked["device check"] += 1
            continue
        if "bench/box_fit.py" in words:
            # on the fake authors' clone: 3 support masks for each of the 73 defect types, as theirs
            proc = run_bench(checkout, statement, places)
            assert proc.returncode == 0, f"{statement}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            assert "73 defect types, 219 held-out masks" in proc.stdout, proc.stdout[-2000:]
            csv_path = checkout / words[words.index("--csv") + 1]
            assert len(csv_path.read_text().splitlines()) == 1 + 73, csv_path
            checked["bench box_fit"] += 1
            continue
        if words[0] == "printf":
            subprocess.run(["bash", "-c", substitute(statement, places)], cwd=checkout, check=True)
            checked["printf"] += 1
            continue
        if words[0] == ".venv/bin/anogen":
            proc = run_anogen(checkout, statement, places, hub_cache)
            assert proc.returncode == 0, f"{statement}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            expect = {
                "estimate": "total",
                "check-data": f"jobs: select_support {expected_pairs(statement)},",
                "gc": "referenced kept",
                "preflight": "preflight: ready",
                "box-ranges": "| category | defect | learned_width | learned_height |",
            }[words[1]]
            assert expect in proc.stdout, (statement, proc.stdout[-2000:])
            if words[1] == "box-ranges":  # one row per defect type, learned from its support masks
                csv_path = checkout / words[words.index("--csv") + 1]
                assert len(csv_path.read_text().splitlines()) == 1 + expected_pairs(statement), csv_path
            checked[f"anogen {words[1]}"] += 1
            files = words[words.index("--configfile") + 1 :] if "--configfile" in words else []
            if len(list(itertools.takewhile(lambda w: not w.startswith("-"), files))) > 1:
                checked["anogen with several config files"] += 1
            continue
        assert words[0] == ".venv/bin/snakemake", f"{page}: command not exercised by this test: {statement}"
        if "--report" in words:
            checked["report"] += 1  # needs a finished run: tests/test_report.py builds it
            continue
        proc = dry_run(checkout, statement, places)
        assert proc.returncode == 0, f"{statement}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        counts, outputs = planned(proc.stdout)
        text = proc.stdout + proc.stderr
        config = config_of(statement, checkout, places)
        if config["studies"]:
            check_study_run(statement, counts, config)
            checked["study"] += 1
        elif "--configfile" not in words:
            # The demo: its data and its tiny random model, and the warning that says so.
            assert counts["demo_data"] == 1 and counts["tiny_model"] == 1, (statement, counts)
            assert counts["learn_embedding"] == len(Plan(config).pairs()) == 7
            assert "random diffusion model" in text
            if "export_generated" in words:
                assert counts["export_generated"] == 1 and "summarize" not in counts, counts
            checked["demo"] += 1
        else:
            check_full_run(statement, words, counts, outputs, text, config, places)
            checked["full run"] += 1
    assert checked["demo"] >= 2 and checked["full run"] >= 5 and checked["printf"] >= 2, checked
    assert checked["study"] >= 3, checked
    assert {
        "anogen preflight",
        "anogen estimate",
        "anogen check-data",
        "anogen gc",
        "anogen with several config files",
        "device wheels",
        "device check",
        "anogen box-ranges",
        "bench box_fit",
    } <= set(checked), checked


def test_demo_config_is_not_used_for_other_data(tmp_path, places):
    """Without --configfile the demo's config would run on the given data: that stops, with the fix named."""
    checkout = fresh_checkout(tmp_path / "checkout")
    proc = dry_run(checkout, f".venv/bin/snakemake --cores all --config data_root={DATA_PLACEHOLDER}", places)
    assert proc.returncode != 0
    assert "--configfile config/mvtec.yaml" in proc.stdout + proc.stderr


def test_full_run_config_is_the_file_over_the_schema_defaults():
    """The leak test: every demo-only value of config/config.yaml differs from the full run's,
    and the full run's validated config equals config/mvtec.yaml over the schema defaults."""
    demo = yaml.safe_load((e2e.REPO / "config" / "config.yaml").read_text())
    mvtec_raw = yaml.safe_load((e2e.REPO / "config" / "mvtec.yaml").read_text())
    full = validate_config(deep_update(mvtec_raw, {"data_root": "/data"}))
    # The Snakefile merges no other file: the effective config is the file (checked on the
    # planned keys in the README test above); here, that the demo's values would show.
    assert full["diffusion"]["model"] == REAL_MODEL and demo["diffusion"]["model"].startswith("tiny:")
    assert full["generation"]["paste_back"] is False and demo["generation"]["paste_back"] is True
    assert full["embedding"]["steps"] == 6000 != demo["embedding"]["steps"]
