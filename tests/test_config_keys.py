"""Config validation (errors name the key) and content keys (exactly the dependants change)."""

import copy
from pathlib import Path

import pytest
import yaml

from anogen.config import deep_update, validate_config
from anogen.errors import ConfigError
from anogen.keys import canonical_json, content_key
from anogen.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
DEMO_LAYOUT = {
    "cat_a": {"defects": ["hole", "scratch"], "texture": False},
    "cat_b": {"defects": ["crack"], "texture": True},
}


def demo_raw():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def plan(raw):
    return Plan(validate_config(raw), layout=copy.deepcopy(DEMO_LAYOUT))


def all_keys(p: Plan) -> dict[str, str]:
    keys = {"dataset": p.dataset_key, "model": p.model_key}
    for c, d in p.pairs():
        keys[f"support/{c}/{d}"] = p.key("support", c, d)
        keys[f"embedding/{c}/{d}"] = p.key("embedding", c, d)
        keys[f"generation/{c}/{d}"] = p.key("generation", c, d)
    for c in p.categories:
        keys[f"foreground/{c}"] = p.key("foreground", c)
    for c, m, v in p.detector_runs():
        keys[f"detector/{c}/{m}/{v}"] = p.key("detector", c, m, v)
        keys[f"evaluation/{c}/{m}/{v}"] = p.key("evaluation", c, m, v)
    return keys


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if a[k] != b[k]}


# ----------------------------------------------------------------------------- validation


def test_shipped_configs_validate():
    validate_config(demo_raw())
    mvtec = yaml.safe_load((ROOT / "config" / "mvtec.yaml").read_text())
    cfg = validate_config(mvtec)
    assert cfg["embedding"]["steps"] == 6000
    assert cfg["generation"]["box_ranges"]["hazelnut"]["hole"]["width"] == [0.1, 0.15]


def test_defaults_filled():
    cfg = validate_config({"data_root": "/data/mvtec_ad"})
    # The defaults are a real run's: the paper's LDM, never the demo's random model or data.
    assert cfg["diffusion"]["model"] == "CompVis/ldm-text2im-large-256"
    assert cfg["generation"]["paste_back"] is False
    assert cfg["support"] == {"shots": 3, "seed": 0, "offset": 0, "published": True, "exclude_from_test": True}
    assert cfg["embedding"]["learning_rate"] == 0.005 and cfg["embedding"]["scale_lr"] is True
    assert cfg["generation"]["steps"] == 50 and cfg["generation"]["guidance_scale"] == 10.0
    assert cfg["detectors"]["tau"] == 0.9 and cfg["detectors"]["draem"]["epochs"] == 700


@pytest.mark.parametrize(
    "override, key",
    [
        ({"unknown_top": 1}, "unknown_top"),
        ({"embedding": {"stepz": 5}}, "embedding.stepz"),
        ({"embedding": {"steps": "many"}}, "embedding.steps"),
        ({"embedding": {"steps": -3}}, "embedding.steps"),
        ({"generation": {"boxes_per_image": 0}}, "generation.boxes_per_image"),
        ({"detectors": {"tau": 1.5}}, "detectors.tau"),
        ({"detectors": {"tau": -0.1}}, "detectors.tau"),
        ({"support": {"shots": 0}}, "support.shots"),
        ({"categories": ["../etc"]}, "categories.0"),
        ({"categories": ["a/b"]}, "categories.0"),
        ({"categories": ["ok..no"]}, "categories.0"),
        ({"detectors": {"models": ["patchcore"]}}, "detectors.models.0"),
        (
            {"generation": {"box_ranges": {"bottle": {"hole": {"width": [0.5, 0.2], "height": [0.1, 0.2]}}}}},
            "generation.box_ranges.bottle.hole.width",
        ),
        (
            {"generation": {"box_ranges": {"bottle": {"hole": {"width": [0.1, 1.5], "height": [0.1, 0.2]}}}}},
            "generation.box_ranges.bottle.hole.width.1",
        ),
        ({"detectors": {"destseg": {"steps": 100, "student_steps": 100}}}, "detectors.destseg.student_steps"),
        ({"embedding": {"gradient_checkpointing": True, "cuda_graph": True}}, "embedding.gradient_checkpointing"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        validate_config(deep_update(demo_raw(), override))
    assert err.value.key == key, str(err.value)
    assert f"'{key}'" in str(err.value)


def test_unknown_category_or_defect_names_the_key():
    with pytest.raises(ConfigError, match="categories"):
        _ = plan(deep_update(demo_raw(), {"categories": ["nope"]})).categories
    with pytest.raises(ConfigError, match="defects.cat_a"):
        plan(deep_update(demo_raw(), {"defects": {"cat_a": ["nope"]}})).pairs()


def test_data_root_is_required():
    with pytest.raises(ConfigError) as err:
        validate_config({})
    assert err.value.key == "data_root"


def test_tiny_model_must_name_a_family():
    with pytest.raises(ConfigError) as err:
        validate_config(deep_update(demo_raw(), {"diffusion": {"model": "tiny:unet"}}))
    assert err.value.key == "diffusion.model"


def test_missing_data_root_names_the_key(tmp_path):
    cfg = validate_config(deep_update(demo_raw(), {"data_root": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="data_root"):
        Plan(cfg).pairs()


# ----------------------------------------------------------------------------- keys


def test_canonical_json_is_order_independent():
    assert canonical_json({"b": 1, "a": [1, 2.5]}) == canonical_json({"a": [1, 2.5], "b": 1})
    assert content_key({"x": 1}) != content_key({"x": 2})
    assert content_key({"x": 1}, {"up": "a"}) != content_key({"x": 1}, {"up": "b"})
    assert len(content_key({})) == 12


def test_content_keys_refuse_non_finite_values_and_tell_bool_from_int():
    for bad in (float("nan"), float("inf"), float("-inf")):
        for spec in ({"x": bad}, {"x": [1.0, bad]}, {"x": {"y": (bad,)}}):
            with pytest.raises(ValueError, match="non-finite"):
                content_key(spec)
        with pytest.raises(ValueError, match="non-finite"):
            content_key({"x": 1}, {"up": bad})
    # JSON spells them differently, so True, 1 and 1.0 are three different keys
    assert canonical_json({"x": True}) == '{"x":true}'
    assert canonical_json({"x": 1}) == '{"x":1}'
    assert canonical_json({"x": 1.0}) == '{"x":1.0}'
    keys = {content_key({"x": v}) for v in (True, 1, 1.0)}
    assert len(keys) == 3
    assert content_key({"x": False}) not in {content_key({"x": 0}), content_key({"x": None})}


def test_spelling_out_defaults_changes_no_key():
    base = all_keys(plan(demo_raw()))
    explicit = deep_update(
        demo_raw(),
        {
            "embedding": {"learning_rate": 0.005, "scale_lr": True, "init_word": "defect"},
            "generation": {"boxes_per_image": 2, "images_per_box": 2, "eta": 0.0, "min_overlap": 0.5},
            "detectors": {"tau": 0.9, "mix_prob": 0.5, "draem": {"learning_rate": 0.0001}},
            "evaluation": {"aupro_fpr_limit": 0.3},
            "support": {"exclude_from_test": True},
        },
    )
    assert all_keys(plan(explicit)) == base


def kinds(names):
    return {n.split("/")[0] for n in names}


def test_tau_changes_only_weakly_supervised_detectors():
    base = all_keys(plan(demo_raw()))
    new = all_keys(plan(deep_update(demo_raw(), {"detectors": {"tau": 1.0}})))
    diff = changed(base, new)
    assert diff and all(("/anogen" in k) for k in diff)
    assert kinds(diff) == {"detector", "evaluation"}
    assert len(diff) == 2 * len(plan(demo_raw()).detector_runs()) // 2


def test_one_box_range_changes_one_generation_and_its_category():
    override = {"generation": {"box_ranges": {"cat_a": {"hole": {"width": [0.2, 0.3], "height": [0.2, 0.3]}}}}}
    diff = changed(all_keys(plan(demo_raw())), all_keys(plan(deep_update(demo_raw(), override))))
    assert "generation/cat_a/hole" in diff
    assert not any(
        k.startswith(("generation/cat_a/scratch", "generation/cat_b", "embedding", "support", "foreground"))
        for k in diff
    )
    assert {k for k in diff if k.startswith("detector")} == {
        "detector/cat_a/draem/anogen",
        "detector/cat_a/destseg/anogen",
    }


def test_anogen_detectors_read_every_defect_of_their_category():
    p = plan(demo_raw())
    for detector in ("draem", "destseg"):
        assert p.upstream("detector", "cat_a", detector, "anogen") == {
            "generation/hole": ("generation", ("cat_a", "hole")),
            "generation/scratch": ("generation", ("cat_a", "scratch")),
        }
        assert p.upstream("detector", "cat_b", detector, "anogen") == {
            "generation/crack": ("generation", ("cat_b", "crack")),
        }
        assert p.upstream("detector", "cat_a", detector, "baseline") == {}
        paths = p.upstream_paths("detector", "cat_a", detector, "anogen", of="generation")
        assert paths == [p.path("generation", "cat_a", "hole"), p.path("generation", "cat_a", "scratch")]


def test_a_later_defects_generation_reruns_its_category_detectors():
    """A change to the second defect's generation reaches the anogen detectors of its category."""
    override = {"generation": {"box_ranges": {"cat_a": {"scratch": {"width": [0.2, 0.3], "height": [0.2, 0.3]}}}}}
    diff = changed(all_keys(plan(demo_raw())), all_keys(plan(deep_update(demo_raw(), override))))
    assert {k for k in diff if k.startswith(("generation", "detector", "evaluation"))} == {
        "generation/cat_a/scratch",
        "detector/cat_a/draem/anogen",
        "detector/cat_a/destseg/anogen",
        "evaluation/cat_a/draem/anogen",
        "evaluation/cat_a/destseg/anogen",
    }
    assert kinds(diff) == {"generation", "detector", "evaluation"}


def test_embedding_steps_change_the_chain_not_the_baselines():
    diff = changed(all_keys(plan(demo_raw())), all_keys(plan(deep_update(demo_raw(), {"embedding": {"steps": 61}}))))
    assert kinds(diff) == {"embedding", "generation", "detector", "evaluation"}
    assert not any("/baseline" in k for k in diff)


def test_detector_budget_leaves_upstream_alone():
    diff = changed(
        all_keys(plan(demo_raw())), all_keys(plan(deep_update(demo_raw(), {"detectors": {"draem": {"epochs": 7}}})))
    )
    assert kinds(diff) == {"detector", "evaluation"}
    assert all("/draem/" in k for k in diff)


def test_runtime_knobs_change_no_key():
    base = all_keys(plan(demo_raw()))
    new = all_keys(
        plan(
            deep_update(
                demo_raw(),
                {
                    "generation": {"batch_size": 3, "channels_last": True, "compile": True},
                    "embedding": {"checkpoint_every": 7, "cuda_graph": True},
                    "detectors": {"checkpoint_every": 9},
                    "resources": {"gpu_slots": 2, "threads": 2},
                },
            )
        )
    )
    assert new == base
    memory = deep_update(demo_raw(), {"embedding": {"gradient_checkpointing": True}})
    assert all_keys(plan(memory)) == base  # a memory switch: same function, same results


def test_support_offset_changes_support_and_everything_downstream():
    """Another set of the same seeded order; offset 0 is not in the spec (the keys made before it existed)."""
    p0, p3 = plan(demo_raw()), plan(deep_update(demo_raw(), {"support": {"offset": 3}}))
    diff = changed(all_keys(p0), all_keys(p3))
    assert {"support", "embedding", "generation", "evaluation", "detector"} == kinds(diff)
    assert "offset" not in p0.spec("support", "cat_a", "hole") and p3.spec("support", "cat_a", "hole")["offset"] == 3
    # the demo's 6 images per defect: the next 3 are the other 3
    assert not set(p0.support_files("cat_a", "hole")) & set(p3.support_files("cat_a", "hole"))


def test_support_seed_changes_support_and_everything_downstream():
    diff = changed(all_keys(plan(demo_raw())), all_keys(plan(deep_update(demo_raw(), {"support": {"seed": 1}}))))
    assert {"support", "embedding", "generation", "evaluation", "detector"} == kinds(diff)
    assert not any(k.startswith("detector") and "/baseline" in k for k in diff)
