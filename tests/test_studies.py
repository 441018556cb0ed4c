"""Studies (config ``studies:``): arms as plans that share artifacts, one test set per study, one
generation per N-pool, arm validation, ``extends``, the paper study's distinct jobs, and its cost."""

from __future__ import annotations

import collections
import contextlib
from pathlib import Path

import pytest
import yaml

from anogen.config import deep_update, load_config_file, resolve_extends, validate_config
from anogen.errors import ConfigError
from anogen.plan import Plan
from anogen.studies.planner import RunPlan

ROOT = Path(__file__).resolve().parents[1]
DEMO_STUDY = ROOT / "config" / "demo-study.yaml"
PAPER_STUDY = ROOT / "config" / "mvtec-paper-study.yaml"


def demo_run(studies: dict, **top) -> RunPlan:
    raw = deep_update(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), top)
    raw["studies"] = studies
    return RunPlan(validate_config(raw))


def by_stage(artifacts) -> collections.Counter:
    return collections.Counter(stage for stage, _, _ in artifacts)


# ----------------------------------------------------------------------------- sharing


def test_demo_study_plans_each_distinct_artifact_once(monkeypatch):
    monkeypatch.chdir(ROOT)
    run = RunPlan(load_config_file(DEMO_STUDY))
    assert sorted(run.studies) == ["demo_n", "demo_tau"]
    artifacts = run.study_artifacts()
    # nut_object's 3 defects; tau 0.90 (N = 4) is also the N = 4 arm; the N = 2 arm's detector
    # reads the first 2 of the one generated set (N = 4)
    assert by_stage(artifacts) == {
        "support": 3,
        "foreground": 1,
        "embedding": 3,
        "generation": 3,
        "detector": 3,
        "evaluation": 3,
    }
    tau, n = run.studies["demo_tau"], run.studies["demo_n"]
    shared = ("nut_object", "draem", "anogen")
    assert tau.arms[0].plan.key("detector", *shared) == n.arms[1].plan.key("detector", *shared)
    assert tau.arms[0].plan.key("evaluation", *shared) == n.arms[1].plan.key("evaluation", *shared)
    n2 = n.arms[0].plan
    assert n2.key("generation", "nut_object", "chip") == tau.arms[1].plan.key("generation", "nut_object", "chip")
    assert n2.spec("generation", "nut_object", "chip")["images_per_normal"] == 4
    assert n2.spec("detector", *shared)["generated_per_image"] == 2
    assert n.arms[1].plan.spec("detector", *shared)["generated_per_image"] == 4


def test_lookup_by_key_finds_the_arm_that_plans_it(monkeypatch):
    monkeypatch.chdir(ROOT)
    run = RunPlan(load_config_file(DEMO_STUDY))
    tau_50 = run.studies["demo_tau"].arms[1].plan
    values = ("nut_object", "draem", "anogen")
    key = tau_50.key("detector", *values)
    assert run.plan_for("detector", values, key) is tau_50
    assert run.plan_for("detector", values, key).job("detector", *values).spec["tau"] == 0.5
    with pytest.raises(ConfigError, match="no planned detector artifact"):
        run.plan_for("detector", values, "0" * 12)


def test_a_config_without_studies_plans_as_before():
    cfg = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    run = RunPlan(cfg)
    plain = Plan(cfg)
    assert run.plans == (run.base,) and run.studies == {}
    for stage in ("generation", "detector", "evaluation"):
        for values in plain.instances(stage):
            assert run.base.key(stage, *values) == plain.key(stage, *values)


def test_the_base_generation_is_pooled_with_the_arms():
    """The config's own N = 4 generation is the arms' N = 8 set, read as its first 4."""
    run = demo_run({"n": {"arms": [{"name": "N8", "set": {"generation": {"images_per_normal": 8}}}]}})
    arm = run.studies["n"].arms[0].plan
    for c, d in run.base.pairs():
        assert run.base.key("generation", c, d) == arm.key("generation", c, d)
        assert run.base.spec("generation", c, d)["images_per_normal"] == 8
    c = run.base.categories[0]
    assert run.base.spec("detector", c, "draem", "anogen")["generated_per_image"] == 4


def test_arms_that_change_the_generation_are_not_pooled():
    run = demo_run(
        {
            "n": {
                "arms": [
                    {"name": "N2", "set": {"generation": {"images_per_normal": 2}}},
                    {"name": "N6_steps", "set": {"generation": {"images_per_normal": 6, "steps": 5}}},
                ]
            }
        }
    )
    n2, n6 = (arm.plan for arm in run.studies["n"].arms)
    c, d = n2.pairs()[0]
    assert n2.key("generation", c, d) != n6.key("generation", c, d)
    assert n2.spec("generation", c, d)["images_per_normal"] == 4  # pooled with the base's N = 4
    assert n6.spec("generation", c, d)["images_per_normal"] == 6


# ----------------------------------------------------------------------------- one test set per study


def test_every_arm_of_a_study_is_evaluated_on_one_test_set():
    run = demo_run(
        {
            "k": {
                "arms": [
                    {"name": "k1", "set": {"support": {"shots": 1}}},
                    {"name": "k3"},
                    {"name": "k3_seed1", "set": {"support": {"seed": 1}}},
                ]
            }
        }
    )
    arms = run.studies["k"].arms
    for c in run.base.categories:
        own = [set(arm.plan.own_support_exclusions(c)) for arm in arms]
        union = tuple(sorted(set().union(*own)))
        assert len(union) > len(own[1])  # seed 1 chose other images
        for arm in arms:
            assert arm.plan.excluded_from_test(c) == union
            assert arm.plan.spec("evaluation", c, "draem", "anogen")["excluded"] == union
        assert run.base.excluded_from_test(c) == tuple(sorted(own[1]))  # the config's own run keeps its own


def test_without_exclusion_every_arm_keeps_every_test_image():
    run = demo_run(
        {"k": {"arms": [{"name": "k1", "set": {"support": {"shots": 1}}}, {"name": "k3"}]}},
        support={"exclude_from_test": False},
    )
    for arm in run.studies["k"].arms:
        assert all(arm.plan.excluded_from_test(c) == () for c in run.base.categories)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory) -> RunPlan:
    """The paper study planned on a tree with MVTec AD's published file counts."""
    from tests.fake_trees import build_mvtec_counts_tree

    data = build_mvtec_counts_tree(tmp_path_factory.mktemp("mvtec"))
    with contextlib.chdir(ROOT):
        config = load_config_file(PAPER_STUDY)
    return RunPlan(validate_config(deep_update(config, {"data_root": str(data)})))


def _per_defect(excluded) -> collections.Counter:
    """How many images of each anomalous (category, defect) folder a test set leaves out."""
    parts = (path.split("/") for path in excluded)
    return collections.Counter((c, d) for c, _, d, _ in parts if d != "good")


def test_the_paper_studies_test_sets_on_mvtec_counts(paper_run):
    """Nested support sets: 2b's union is its k = 5 set (5 per defect type, not 1 + 3 + 5 distinct);
    2a's sets are disjoint (6); every other study keeps Table 1's test set (3)."""
    from anogen.data.mvtec_counts import MVTEC_AD_COUNTS

    defects = {(c, d) for c, (_, _, ds) in MVTEC_AD_COUNTS.items() for d in ds}
    anomalous = sum(n for _, _, ds in MVTEC_AD_COUNTS.values() for n in ds.values())
    assert (len(defects), anomalous) == (73, 1258)
    per_study = {}
    for name, study in paper_run.studies.items():
        arm = study.arms[0].plan
        per_study[name] = _per_defect(p for c in arm.categories for p in arm.excluded_from_test(c))
    for name, taken in per_study.items():
        expected = {"table2a": 6, "table2b": 5}.get(name, 3)
        assert set(taken) == defects and set(taken.values()) == {expected}, (name, taken.most_common(2))
    k1, k3, k5 = (arm.plan for arm in paper_run.studies["table2b"].arms)
    set1, set2 = (arm.plan for arm in paper_run.studies["table2a"].arms)
    for c, d in sorted(defects):
        s1, s3, s5 = (set(p.support_files(c, d)) for p in (k1, k3, k5))
        assert len(s1) == 1 and s1 < s3 < s5
        assert not set(set1.support_files(c, d)) & set(set2.support_files(c, d))
        assert set1.support_files(c, d) == k3.support_files(c, d) == paper_run.base.support_files(c, d)
    kept = {name: anomalous - sum(taken.values()) for name, taken in per_study.items()}
    # the anomalous test images each study keeps (main, before nesting: 2a 863, 2b 751)
    table1_sets = dict.fromkeys(("table1", "table2c", "table3", "table4", "fig5"), 1039)
    assert kept == {**table1_sets, "table2a": 820, "table2b": 893}
    # every study's default arm is scored on Table 1's 1,039 too, more than the k = 5 arm keeps
    for study in paper_run.studies.values():
        defaults = [arm for arm in study.arms if arm.base_test is not None]
        assert defaults, study.name
        for arm in defaults:
            taken = _per_defect(p for c in arm.plan.categories for p in arm.base_test.excluded_from_test(c))
            assert anomalous - sum(taken.values()) == 1039 >= kept["table2b"], (study.name, arm.name)


def test_the_default_arm_is_also_scored_on_table1s_test_set(paper_run):
    """The arms whose support sets are the config's are scored on Table 1's test set too: in 2a and 2b
    by Table 1's own evaluation of the same detector (no job added), elsewhere by their study's."""
    table1 = paper_run.studies["table1"].arms[1].plan
    with_base = {
        (study.name, arm.name): arm for study in paper_run.studies.values() for arm in study.arms if arm.base_test
    }
    assert {(s, a) for s, study in paper_run.studies.items() for a in (x.name for x in study.arms)} - set(
        with_base
    ) == {("table2a", "set2"), ("table2b", "k1"), ("table2b", "k5")}
    for c in paper_run.base.categories:
        table1_test = paper_run.base.own_support_exclusions(c)
        for (study, name), arm in with_base.items():
            assert arm.base_test.excluded_from_test(c) == table1_test, (study, name)
            assert (arm.base_test is arm.plan) == (study not in ("table2a", "table2b")), (study, name)
        for study, name in (("table2a", "set1"), ("table2b", "k3")):
            arm, run = with_base[(study, name)], (c, "draem", "anogen")
            assert arm.base_test.key("detector", *run) == arm.plan.key("detector", *run) == table1.key("detector", *run)
            assert arm.base_test.key("evaluation", *run) == table1.key("evaluation", *run)
            assert arm.plan.key("evaluation", *run) != table1.key("evaluation", *run)
    entry = paper_run.study_spec("table2b")["arms"][1]["evaluations"][0]
    c = entry["category"]
    assert entry["base_metrics"] == table1.path("evaluation", c, "draem", "anogen", name="metrics.json")
    assert entry["base_metrics"] in paper_run.evaluation_files("table2b")
    assert "base_metrics" not in paper_run.study_spec("table2b")["arms"][2]["evaluations"][0]
    # the README's counts: no evaluation added, each of 2a's and 2b's test sets adds one per category
    assert by_stage(paper_run.study_artifacts())["evaluation"] == 23 * 15


def test_an_arm_on_another_test_set_gets_its_own_base_evaluation():
    """Without a study that evaluates the config's test set, the default arm's base evaluation is a job
    of its own: the same detector, evaluated once more."""
    run = demo_run({"k": {"arms": [{"name": "k3"}, {"name": "k5", "set": {"support": {"shots": 5}}}]}})
    k3, k5 = run.studies["k"].arms
    assert k5.base_test is None and k3.base_test is not None and k3.base_test is not k3.plan
    values = ("nut_object", "draem", "anogen")
    assert k3.base_test.key("detector", *values) == k3.plan.key("detector", *values)
    assert k3.base_test.key("evaluation", *values) == run.base.key("evaluation", *values)
    assert k3.base_test.key("evaluation", *values) != k3.plan.key("evaluation", *values)
    artifacts = run.study_artifacts()
    assert by_stage(artifacts)["evaluation"] == 3 * 2 + 3  # 3 categories: k3 and k5, and k3 on its own set
    assert by_stage(artifacts)["detector"] == 3 * 2
    key = k3.base_test.key("evaluation", *values)
    assert run.plan_for("evaluation", values, key).excluded_from_test("nut_object") == run.base.excluded_from_test(
        "nut_object"
    )


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("arm_set", "key"),
    [
        ({"data_root": "elsewhere"}, "studies.s.arms.a.set.data_root"),
        ({"detectors": {"variants": ["baseline"]}}, "studies.s.arms.a.set.detectors.variants"),
        ({"generation": {"batch_size": 2}}, "studies.s.arms.a.set.generation.batch_size"),
        ({"categories": ["nut_object"]}, "studies.s.arms.a.set.categories"),
        ({"support": {"exclude_from_test": False}}, "studies.s.arms.a.set.support.exclude_from_test"),
        ({"detectors": {"tau": 1.5}}, "studies.s.arms.a.set.detectors.tau"),
        ({"detectors": {"taux": 0.5}}, "studies.s.arms.a.set.detectors.taux"),
    ],
)
def test_an_arm_that_cannot_be_run_is_refused_by_key(arm_set, key):
    with pytest.raises(ConfigError) as error:
        demo_run({"s": {"arms": [{"name": "a", "set": arm_set}]}})
    assert error.value.key == key, error.value


def test_an_arm_tau_that_a_per_detector_tau_would_hide_is_refused():
    """detectors.<d>.tau overrides detectors.tau: over a config that sets it for a study detector,
    an arm's detectors.tau would change nothing."""
    tau_arm = {"s": {"arms": [{"name": "a", "set": {"detectors": {"tau": 0.8}}}]}}
    with pytest.raises(ConfigError) as error:
        demo_run(tau_arm, detectors={"draem": {"tau": 0.9}})
    assert error.value.key == "studies.s.arms.a.set.detectors.tau"
    assert "detectors.draem.tau (0.9)" in error.value.problem
    # per detector it is the arm's; a per-detector tau of a detector outside the study hides nothing
    per_detector = {"s": {"arms": [{"name": "a", "set": {"detectors": {"draem": {"tau": 0.8}}}}]}}
    assert (
        demo_run(per_detector, detectors={"draem": {"tau": 0.9}}).studies["s"].arms[0].plan.detector_tau("draem") == 0.8
    )
    assert demo_run(tau_arm, detectors={"destseg": {"tau": 1.0}}).studies["s"].arms[0].plan.detector_tau("draem") == 0.8


def test_table3_arms_train_their_tau_over_the_authors_preset(tmp_path, monkeypatch):
    """config/mvtec-authors.yaml sets detectors.draem.tau: the paper study's Table 3 arms over it
    still train four different taus (four detectors), as over config/mvtec.yaml."""
    from tests.fake_trees import build_fake_authors_repo, build_fake_mvtec

    monkeypatch.chdir(ROOT)
    data = build_fake_mvtec(tmp_path / "mvtec", per_folder=6, categories=["hazelnut"])
    repo = build_fake_authors_repo(tmp_path / "AnoGen", data, dim=8)
    table3 = yaml.safe_load(PAPER_STUDY.read_text())["studies"]["table3"]
    top = {"data_root": str(data), "authors_repo": str(repo), "categories": ["hazelnut"], "studies": {"table3": table3}}
    expected = {"tau_1.0": 1.0, "tau_0.95": 0.95, "tau_0.90": 0.9, "tau_0.80": 0.8}
    for preset in ("mvtec-authors.yaml", "mvtec.yaml"):
        run = RunPlan(load_config_file(ROOT / "config" / preset, top))
        arms = run.studies["table3"].arms
        assert {arm.name: arm.plan.detector_tau("draem") for arm in arms} == expected, preset
        assert len({arm.plan.key("detector", "hazelnut", "draem", "anogen") for arm in arms}) == 4, preset


def test_arm_names_are_unique_within_a_study():
    with pytest.raises(ConfigError, match=r"arm names \['a'\]"):
        demo_run({"s": {"arms": [{"name": "a"}, {"name": "a", "set": {"detectors": {"tau": 0.8}}}]}})


def test_study_names_and_paper_tables_are_checked_by_the_schema():
    with pytest.raises(ConfigError, match="studies"):
        demo_run({"bad name": {"arms": [{"name": "a"}]}})
    with pytest.raises(ConfigError, match="paper"):
        demo_run({"s": {"paper": "table9", "arms": [{"name": "a"}]}})


# ----------------------------------------------------------------------------- extends


def test_extends_reads_the_base_file_first(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("data_root: /data\ndetectors: {tau: 0.8, mix_prob: 0.3}\n")
    middle = tmp_path / "middle.yaml"
    middle.write_text(f"extends: {base}\ndetectors: {{tau: 0.7}}\n")
    cfg = load_config_file(middle, {"detectors": {"mix_prob": 0.4}})
    assert cfg["detectors"]["tau"] == 0.7 and cfg["detectors"]["mix_prob"] == 0.4
    assert cfg["data_root"] == "/data" and cfg["extends"] == str(base)


def test_extends_refuses_a_cycle_and_a_missing_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"extends: {b}\n")
    b.write_text(f"extends: {a}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        resolve_extends({"extends": str(a)})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_extends({"extends": str(tmp_path / "nope.yaml")})


def test_the_paper_study_is_config_mvtec_with_studies(monkeypatch):
    monkeypatch.chdir(ROOT)
    study = load_config_file(PAPER_STUDY)
    mvtec = load_config_file(ROOT / "config" / "mvtec.yaml")
    assert {k: v for k, v in study.items() if k not in ("studies", "extends")} == {
        k: v for k, v in mvtec.items() if k not in ("studies", "extends")
    }
    assert sorted(study["studies"]) == ["fig5", "table1", "table2a", "table2b", "table2c", "table3", "table4"]


# ----------------------------------------------------------------------------- cost


def test_estimate_counts_each_shared_artifact_once_and_each_arm_alone(monkeypatch):
    """Demo study, hand-computed: 3 defects, 16 normal images; generation at the pool's N = 4."""
    from anogen import estimate as est

    monkeypatch.chdir(ROOT)
    table = {
        "stages": {
            "embedding": {"value": 1.0},  # steps/s
            "generation": {"value": 1.0, "steps": 10},  # images/s at the demo's 10 steps
            "detector_draem": {"value": 1.0, "image_size": 64},
            "evaluation": {"value": 1.0},
        }
    }
    config = load_config_file(DEMO_STUDY)
    study = est.build_study_jobs(config, table, Path("throughput_test.json"))
    shared, alone = study.shared.stage_jobs(), study.alone.stage_jobs()
    assert shared == {"embedding": 3, "generation": 3, "detector": 3, "evaluation": 3}
    # each of the 4 arms alone: its own 3 embeddings and generations, 1 detector, 1 evaluation
    assert alone == {"embedding": 12, "generation": 12, "detector": 4, "evaluation": 4}
    hours = study.shared.stage_hours()
    assert hours["embedding"] == pytest.approx(3 * 60 / 3600)
    assert hours["generation"] == pytest.approx(3 * 16 * 4 / 3600)  # N = 4 for every arm (the pool)
    alone_gen = sum(j.seconds for j in study.alone.jobs if j.stage == "generation")
    assert alone_gen == pytest.approx(3 * 16 * (4 + 4 + 2 + 4))  # tau arms 4, N2 alone 2, N4 4
    assert study.cpu_jobs == {"support": 3, "foreground": 1}
    text = est.format_study_report(study, 2)
    assert "2 studies, 4 arms" in text and "sharing saves" in text


def test_an_arm_can_take_the_seeded_set_instead_of_the_published_one(tmp_path):
    """Table 2a over the authors' preset: their published support set vs a seeded one."""
    from tests.fake_trees import build_fake_authors_repo, build_fake_mvtec

    data = build_fake_mvtec(tmp_path / "mvtec", per_folder=6, categories=["hazelnut"])
    repo = build_fake_authors_repo(tmp_path / "AnoGen", data, dim=8)
    raw = {
        "data_root": str(data),
        "authors_repo": str(repo),
        "results_dir": str(tmp_path / "results"),
        "categories": ["hazelnut"],
        "studies": {
            "table2a": {
                "paper": "table2a",
                "arms": [
                    {"name": "published", "paper_column": "1st set"},
                    {"name": "seeded", "paper_column": "2nd set", "set": {"support": {"published": False, "seed": 1}}},
                ],
            }
        },
    }
    run = RunPlan(validate_config(raw))
    published, seeded = (arm.plan for arm in run.studies["table2a"].arms)
    assert published.support_files("hazelnut", "crack") == ("000.png", "001.png", "002.png")  # the authors' names
    assert "files" in published.spec("support", "hazelnut", "crack") and "seed" not in published.spec(
        "support", "hazelnut", "crack"
    )
    assert seeded.spec("support", "hazelnut", "crack")["seed"] == 1
    assert seeded.support_origin("hazelnut", "crack") == "support.seed"
    union = set(published.own_support_exclusions("hazelnut")) | set(seeded.own_support_exclusions("hazelnut"))
    assert published.excluded_from_test("hazelnut") == seeded.excluded_from_test("hazelnut") == tuple(sorted(union))


def test_an_arm_is_checked_like_a_whole_config():
    """Arms validate only the sections they change: the result equals validating the whole config."""
    run = demo_run({"s": {"arms": [{"name": "a", "set": {"detectors": {"tau": 0.5}, "generation": {"steps": 3}}}]}})
    arm = run.studies["s"].arms[0].plan.config
    whole = validate_config(deep_update(run.base.config, {"detectors": {"tau": 0.5}, "generation": {"steps": 3}}))
    whole["studies"] = {}
    whole["detectors"]["models"], whole["detectors"]["variants"] = ["draem"], ["anogen"]
    assert arm == whole
    with pytest.raises(ConfigError) as error:  # a semantic check over sections (student_steps < steps)
        demo_run({"s": {"arms": [{"name": "a", "set": {"detectors": {"destseg": {"student_steps": 10**6}}}}]}})
    assert error.value.key == "studies.s.arms.a.set.detectors.destseg.student_steps"
    with pytest.raises(ConfigError) as error:
        demo_run({"s": {"arms": [{"name": "a", "set": {"generatio": {"steps": 3}}}]}})
    assert error.value.key == "studies.s.arms.a.set.generatio"


def test_gc_keeps_every_arms_artifacts(monkeypatch):
    from anogen.commands.keys import run_referenced_dirs

    monkeypatch.chdir(ROOT)
    config = load_config_file(DEMO_STUDY)
    kept = {str(d) for d in run_referenced_dirs(config)}
    run = RunPlan(config)
    for (stage, values, _), plan in run.study_artifacts().items():
        assert str(Path(plan.path(stage, *values)).parent) in kept
    tau_50 = run.studies["demo_tau"].arms[1].plan
    assert str(Path(tau_50.path("detector", "nut_object", "draem", "anogen")).parent) in kept
    # the config's own run (rule all) too, with its generation pooled like the arms'
    assert str(Path(run.base.path("generation", "nut_object", "chip")).parent) in kept
