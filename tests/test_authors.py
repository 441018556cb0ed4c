"""The authors' published artefacts: named support sets, per-defect box templates, imported embeddings.

A small fake of the authors' tree (``DIFFUSION/images/train_images``, ``mask_template``,
``logs/<c>_<d>/embeddings.pt``) and a matching MVTec-layout data set are built in tmp; no file
of the authors' repository is used.
"""

from __future__ import annotations

import copy
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from anogen.authors import load_authors_embedding, published_support_files, published_template
from anogen.config import deep_update, validate_config
from anogen.data.support import build_support_set, support_items
from anogen.embedding.imported import import_authors_embedding
from anogen.errors import ConfigError, DataError
from anogen.generation.boxes import sample_boxes
from anogen.generation.planning import plan_generation
from anogen.generation.run import check_embedding_width
from anogen.io import load_manifest, sha256_file, verify_manifest
from anogen.keys import content_key
from anogen.plan import Plan

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
DIM = 1280
# The data set: category -> defect -> number of test images (000.png, 001.png, ...).
DATA = {"bottle": {"broken_large": 5, "contamination": 4}, "screw": {"thread_top": 4}}
# What the fake authors' tree publishes (names in the user's data, like theirs).
PUBLISHED = {
    ("bottle", "broken_large"): ["004.png", "001.png", "003.png"],
    ("bottle", "contamination"): ["000.png", "002.png", "003.png"],
    ("screw", "thread_top"): ["001.png", "002.png", "003.png"],
}
TEMPLATES = {("bottle", "broken_large"), ("bottle", "contamination")}  # none for screw, as theirs


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_mvtec(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for category, defects in DATA.items():
        for i in range(3):
            _save(
                root / category / "train" / "good" / f"{i:03d}.png",
                rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            )
        _save(root / category / "test" / "good" / "000.png", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        for defect, n in defects.items():
            for i in range(n):
                _save(
                    root / category / "test" / defect / f"{i:03d}.png",
                    rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                )
                mask = np.zeros((SIZE, SIZE), np.uint8)
                mask[4 + i : 10 + i, 5:12] = 255
                _save(root / category / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


def template_array(category: str, defect: str) -> np.ndarray:
    """Left half white for broken_large, a centred square for contamination (0/255, 64 px)."""
    t = np.zeros((64, 64), np.uint8)
    if defect == "broken_large":
        t[:, :32] = 255
    else:
        t[16:48, 16:48] = 255
    return t


def vector_for(category: str, defect: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(len(category) * 100 + len(defect))
    return torch.randn(1, DIM, generator=g)


def save_authors_embedding(path: Path, vector: torch.Tensor, old_torch: bool = False) -> None:
    """Like the authors' EmbeddingManager.save: {string_to_token, string_to_param: ParameterDict}."""
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vector.clone())})
    if old_torch:  # their files come from a torch whose ParameterDict had no _keys
        params.__dict__.pop("_keys", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_token": {"*": torch.tensor(1008)}, "string_to_param": params}, path)


def make_authors_tree(root: Path, data_root: Path) -> Path:
    for (category, defect), names in PUBLISHED.items():
        folder = root / "DIFFUSION" / "images" / "train_images" / category
        for name in names:
            # Stand-ins for their copies: the user's own bytes (what they published are MVTec's files).
            (folder / defect).mkdir(parents=True, exist_ok=True)
            (folder / defect / name).write_bytes((data_root / category / "test" / defect / name).read_bytes())
            stem = Path(name).stem
            (folder / f"{defect}_mask").mkdir(parents=True, exist_ok=True)
            (folder / f"{defect}_mask" / f"{stem}_mask.png").write_bytes(
                (data_root / category / "ground_truth" / defect / f"{stem}_mask.png").read_bytes()
            )
        (folder / defect / ".DS_Store").write_bytes(b"\0\1")  # as in their tree: must be ignored
        if (category, defect) in TEMPLATES:
            _save(
                root / "DIFFUSION" / "images" / "mask_template" / category / defect / "mask.png",
                template_array(category, defect),
            )
        save_authors_embedding(
            root / "DIFFUSION" / "logs" / f"{category}_{defect}" / "embeddings.pt",
            vector_for(category, defect),
            old_torch=(category == "bottle"),
        )
    return root


@pytest.fixture()
def trees(tmp_path):
    data = make_mvtec(tmp_path / "mvtec")
    authors = make_authors_tree(tmp_path / "AnoGen", data)
    return data, authors


def base_config(data: Path, authors: Path | None = None, **extra) -> dict:
    raw = {"data_root": str(data), "categories": ["bottle", "screw"], "authors_repo": str(authors) if authors else None}
    return validate_config(deep_update(raw, extra))


# ----------------------------------------------------------------------------- support sets


def test_explicit_support_list_is_exactly_those_files_in_order(trees, tmp_path):
    data, _ = trees
    files = ["003.png", "000.png", "004.png"]
    plan = Plan(base_config(data, support={"files": {"bottle": {"broken_large": files}}}))
    spec = plan.spec("support", "bottle", "broken_large")
    assert spec == {"category": "bottle", "defect": "broken_large", "files": files}
    # Unlisted defects keep the seeded choice.
    assert plan.spec("support", "bottle", "contamination")["seed"] == 0
    key = plan.key("support", "bottle", "broken_large")
    manifest = build_support_set(
        data,
        "bottle",
        "broken_large",
        files=spec["files"],
        out_dir=tmp_path / "s",
        key=key,
        inputs=plan.inputs("support", "bottle", "broken_large"),
    )
    items = support_items(manifest)
    assert [it["source_image"] for it in items] == [f"bottle/test/broken_large/{f}" for f in files]
    assert [it["source_mask"] for it in items] == [
        f"bottle/ground_truth/broken_large/{Path(f).stem}_mask.png" for f in files
    ]
    m = load_manifest(manifest)
    assert m["spec"] == spec and m["extra"]["selection"] == "listed"
    assert content_key(m["spec"], m["inputs"]) == key
    verify_manifest(manifest)
    # The order is part of the set (the key covers the names and their order).
    reordered = Plan(base_config(data, support={"files": {"bottle": {"broken_large": files[::-1]}}}))
    assert reordered.key("support", "bottle", "broken_large") != key


def test_published_support_sets_are_read_from_the_authors_tree(trees):
    data, authors = trees
    plan = Plan(base_config(data, authors))
    for (category, defect), names in PUBLISHED.items():
        assert plan.spec("support", category, defect)["files"] == sorted(names)
    assert published_support_files(authors, "bottle", "broken_large") == ["001.png", "003.png", "004.png"]
    # support.files wins over the published folder.
    mine = Plan(base_config(data, authors, support={"files": {"bottle": {"broken_large": ["000.png"]}}}))
    assert mine.spec("support", "bottle", "broken_large")["files"] == ["000.png"]
    assert mine.spec("support", "bottle", "contamination")["files"] == ["000.png", "002.png", "003.png"]


def test_published_file_missing_from_the_data_names_it(trees, tmp_path):
    data, authors = trees
    (data / "bottle" / "test" / "contamination" / "002.png").unlink()
    plan = Plan(base_config(data, authors))
    spec = plan.spec("support", "bottle", "contamination")
    with pytest.raises(DataError) as err:
        build_support_set(
            data,
            "bottle",
            "contamination",
            files=spec["files"],
            out_dir=tmp_path / "s",
            key="k",
            origin=plan.support_origin("bottle", "contamination"),
        )
    message = str(err.value)
    assert str(data / "bottle" / "test" / "contamination" / "002.png") in message
    assert "authors' published support set" in message
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_bad_authors_repo_names_the_key(trees, tmp_path):
    data, _ = trees
    with pytest.raises(ConfigError) as err:
        Plan(base_config(data, tmp_path)).spec("support", "bottle", "broken_large")
    assert err.value.key == "authors_repo"


# ----------------------------------------------------------------------------- box templates


def test_strict_containment_rejects_a_box_exactly_at_the_threshold():
    # 8x8 image, template = columns 0..2; boxes are 4 px wide and full height: the best box
    # (columns 0..3) has exactly 3/4 of its area inside.
    template = np.zeros((8, 8), np.uint8)
    template[:, :3] = 1
    args = (template, 1, [0.5, 0.5], [1.0, 1.0], False, 0.75, 400)
    boxes = sample_boxes(np.random.default_rng(0), *args, image_name="img", defect="d")
    raster = boxes[0].to_mask(8, 8)
    assert (raster & template).sum() == 0.75 * raster.sum()
    with pytest.raises(DataError, match="generation.template_containment=0.75 \\(strict\\)"):
        sample_boxes(
            np.random.default_rng(0),
            *args,
            image_name="img",
            defect="d",
            strict=True,
            overlap_key="generation.template_containment",
        )


def test_template_replaces_the_foreground_for_that_defect(trees):
    data, authors = trees
    plan = Plan(base_config(data, authors))
    template = plan.box_template("bottle", "broken_large")
    assert template == published_template(authors, "bottle", "broken_large")
    assert plan.box_template("screw", "thread_top") is None
    spec = plan.spec("generation", "bottle", "broken_large")
    assert spec["template"] == {"sha256": sha256_file(template), "containment": 0.75}
    assert "templates" not in spec and "template_containment" not in spec
    assert "foreground" not in plan.inputs("generation", "bottle", "broken_large")
    assert "foreground" in plan.inputs("generation", "screw", "thread_top")
    assert "template" not in plan.spec("generation", "screw", "thread_top")

    spec = dict(spec, box={"width": [0.2, 0.3], "height": [0.2, 0.3], "rotate": True}, max_tries=5000)
    normals = sorted((data / "bottle" / "train" / "good").glob("*.png"))
    resolution = 48
    _, _, planned = plan_generation(
        normal_images=normals,
        data_root=data,
        foreground_manifest=None,
        spec=spec,
        resolution=resolution,
        template=template,
    )
    allowed = np.zeros((resolution, resolution), np.uint8)
    allowed[:, :24] = 1  # the left half of the template, at 48 px
    assert len(planned) == len(normals) * spec["images_per_normal"]
    for item in planned:
        raster = item.box.to_mask(resolution, resolution)
        assert (raster & allowed).sum() > 0.75 * raster.sum()
    # A template edited after planning is refused.
    _save(template, np.full((64, 64), 255, np.uint8))
    with pytest.raises(DataError, match="changed since the workflow was planned"):
        plan_generation(
            normal_images=normals,
            data_root=data,
            foreground_manifest=None,
            spec=spec,
            resolution=resolution,
            template=template,
        )


def test_a_changed_template_reruns_only_that_defects_generation(trees):
    data, authors = trees
    raw = {"data_root": str(data), "categories": ["bottle", "screw"], "authors_repo": str(authors)}

    def keys():
        p = Plan(validate_config(raw))
        out = {}
        for c, d in p.pairs():
            out[f"support/{c}/{d}"] = p.key("support", c, d)
            out[f"embedding/{c}/{d}"] = p.key("embedding", c, d)
            out[f"generation/{c}/{d}"] = p.key("generation", c, d)
        for c, m, v in p.detector_runs():
            out[f"detector/{c}/{m}/{v}"] = p.key("detector", c, m, v)
        return out

    before = keys()
    path = published_template(authors, "bottle", "contamination")
    t = template_array("bottle", "contamination")
    t[0, 0] = 255
    _save(path, t)
    os.utime(path, ns=(1, 1))  # a new mtime too, as any edit gives; the cache keys on it
    after = keys()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        "generation/bottle/contamination",
        "detector/bottle/draem/anogen",
        "detector/bottle/destseg/anogen",
    }


# ----------------------------------------------------------------------------- embeddings


def test_import_writes_exactly_the_published_vector(trees, tmp_path):
    data, authors = trees
    plan = Plan(base_config(data, authors, embedding={"source": "authors"}))
    for category, defect in plan.pairs():
        source = plan.embedding_source(category, defect)
        spec = plan.spec("embedding", category, defect)
        assert spec["sha256"] == sha256_file(source) and spec["source"] == "authors"
        assert plan.inputs("embedding", category, defect) == {}
        key = plan.key("embedding", category, defect)
        out = tmp_path / "emb" / category / defect / key
        manifest = import_authors_embedding(source=source, spec=spec, out_dir=out, key=key, inputs={})
        tensors = load_file(str(out / "learned_embeds.safetensors"))
        assert list(tensors) == ["<anomaly>"]
        assert torch.equal(tensors["<anomaly>"], vector_for(category, defect).reshape(1, DIM))
        with open(out / "loss.csv", newline="") as fh:
            assert list(csv.reader(fh)) == [["step", "loss", "lr"]]
        m = load_manifest(manifest)
        assert m["extra"]["source"] == "authors" and m["extra"]["source_token"] == "*"
        assert m["extra"]["trained_steps"] == 0 and m["extra"]["dim"] == DIM
        verify_manifest(manifest)


def test_learned_keys_do_not_see_the_source_selector(trees):
    data, authors = trees
    learn = Plan(base_config(data))
    spec = learn.spec("embedding", "bottle", "broken_large")
    assert "source" not in spec and "steps" in spec
    assert learn.inputs("embedding", "bottle", "broken_large")["model"] == learn.model_key


def test_unsafe_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "embeddings.pt"
    torch.save({"string_to_token": {"*": torch.tensor(1)}, "string_to_param": Evil()}, path)
    with pytest.raises(DataError) as err:
        load_authors_embedding(path)
    assert str(path) in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()


def test_embedding_files_of_old_and_new_torch_load(tmp_path):
    v = torch.randn(1, DIM)
    for old in (False, True):
        path = tmp_path / f"e{old}.pt"
        save_authors_embedding(path, v, old_torch=old)
        token, vector = load_authors_embedding(path)
        assert token == "*" and torch.equal(vector, v.reshape(-1))


def test_missing_published_embedding_and_missing_repo_name_the_key(trees):
    data, authors = trees
    (authors / "DIFFUSION" / "logs" / "screw_thread_top" / "embeddings.pt").unlink()
    plan = Plan(base_config(data, authors, embedding={"source": "authors"}))
    with pytest.raises(ConfigError, match="screw_thread_top") as err:
        plan.spec("embedding", "screw", "thread_top")
    assert err.value.key == "embedding.source"
    with pytest.raises(ConfigError) as err:
        base_config(data, None, embedding={"source": "authors"})
    assert err.value.key == "embedding.source"


def test_generation_refuses_an_embedding_of_another_width(trees, tmp_path):
    data, authors = trees
    plan = Plan(base_config(data, authors, embedding={"source": "authors"}))
    out = tmp_path / "emb"
    import_authors_embedding(
        source=plan.embedding_source("bottle", "broken_large"),
        spec=plan.spec("embedding", "bottle", "broken_large"),
        out_dir=out,
        key="k",
    )

    class TinyBackbone:
        model, family, embedding_dim = "tiny-ldm", "ldm", 32

    with pytest.raises(ConfigError) as err:
        check_embedding_width(out / "learned_embeds.safetensors", vector_for("bottle", "broken_large"), TinyBackbone())
    assert err.value.key == "diffusion.model"
    assert "1280-d" in str(err.value) and "32-d" in str(err.value) and "embedding.source" in str(err.value)


# ----------------------------------------------------------------------------- the preset


def authors_preset() -> dict:
    return yaml.safe_load((REPO / "config" / "mvtec-authors.yaml").read_text())


def test_preset_needs_dtd_and_the_clone(tmp_path):
    from anogen.config import check_required_sources

    raw = authors_preset()
    cfg = validate_config(deep_update(raw, {"authors_repo": str(tmp_path)}))
    # DTD: required to train a detector (checked while the DAG is built, see the e2e test) ...
    with pytest.raises(ConfigError) as err:
        check_required_sources(cfg)
    assert err.value.key == "detectors.texture_source"
    # ... and so is timm's resnet18.a1_in1k file for the DeSTSeg teacher (the error says where from)
    with_dtd = deep_update(cfg, {"detectors": {"texture_source": str(tmp_path)}})
    with pytest.raises(ConfigError) as err:
        check_required_sources(with_dtd)
    assert err.value.key == "detectors.destseg.teacher_weights" and "resnet18.a1_in1k" in str(err.value)
    check_required_sources(deep_update(with_dtd, {"detectors": {"destseg": {"teacher_weights": "t.safetensors"}}}))
    with pytest.raises(ConfigError) as err:
        validate_config(deep_update(raw, {"detectors": {"texture_source": str(tmp_path)}}))
    assert err.value.key == "embedding.source"


def test_preset_holds_the_authors_protocol(tmp_path):
    mvtec = validate_config(yaml.safe_load((REPO / "config" / "mvtec.yaml").read_text()))
    cfg = validate_config(
        deep_update(authors_preset(), {"authors_repo": str(tmp_path), "detectors": {"texture_source": str(tmp_path)}})
    )
    templates = cfg["embedding"]["templates"]
    assert len(templates) == 81 and len(set(templates)) == 57
    assert templates[0] == "a photo of a {}" and templates[-1] == "a depiction of a small {}"
    assert cfg["embedding"]["source"] == "authors"
    # DRAEM: the baseline with the official code's recipe, the AnoGen variants with the fork's
    assert cfg["detectors"]["draem"]["schedule"] == "original" and cfg["detectors"]["draem"]["batch_size"] == 8
    fork = {"batch_size": 16, "schedule": "anogen"}
    assert cfg["detectors"]["draem"]["variant_overrides"] == {"anogen": fork, "generated_only": fork}
    assert cfg["support"]["exclude_from_test"] is False
    assert cfg["detectors"]["require_texture_source"] is True
    assert cfg["defects"] == {"metal_nut": ["bent", "color", "scratch"]}
    assert cfg["generation"]["template_containment"] == 0.75
    # Everything else is config/mvtec.yaml's.
    assert cfg["evaluation"]["mask_resize"] == "official"  # each detector's own test-script rule
    differ = {"authors_repo", "defects", "support", "embedding", "detectors", "generation", "evaluation"}
    differ.add("category_options")  # screw: the authors' Otsu foreground
    assert cfg["category_options"]["screw"]["foreground_method"] == "otsu_authors"
    assert {c: o for c, o in cfg["category_options"].items() if c != "screw"} == mvtec["category_options"]
    assert {k: v for k, v in cfg["evaluation"].items() if k != "mask_resize"} == {
        k: v for k, v in mvtec["evaluation"].items() if k != "mask_resize"
    }
    for section in set(mvtec) - differ:
        assert cfg[section] == mvtec[section], section
    assert cfg["generation"]["box_ranges"] == mvtec["generation"]["box_ranges"]
    assert cfg["detectors"]["mixed_precision"] == "no"  # fp32, as the authors trained
    assert cfg["detectors"]["draem"]["tau"] == 0.9 and cfg["detectors"]["destseg"]["tau"] == 1.0
    a, b = copy.deepcopy(cfg["detectors"]), copy.deepcopy(mvtec["detectors"])
    for d in (a, b):
        (
            d.pop("texture_source"),
            d.pop("require_texture_source"),
        )
        d.pop("mixed_precision"), d["draem"].pop("tau"), d["destseg"].pop("tau")
        for name in ("variant_overrides", "authors_sampling_quirk"):
            d["draem"].pop(name)
        d["destseg"].pop("teacher")
    assert cfg["detectors"]["draem"]["authors_sampling_quirk"] and cfg["detectors"]["destseg"]["teacher"] == "timm_a1"
    assert a == b


# ----------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_support_and_embeddings_stages_run_without_diffusion_weights(trees, tmp_path):
    from tests import e2e

    data, authors = trees
    workdir = tmp_path / "work"
    workdir.mkdir()  # no config/config.yaml: the preset alone, plus the overrides below
    overrides = tmp_path / "overrides.yaml"  # no DTD: the stages before the detectors need none
    overrides.write_text(yaml.safe_dump({"categories": ["bottle", "screw"]}))
    # Targets before --configfile/--config (which take every following word), after a flag
    # (planned_jobs ends its own arguments with --quiet rules, which would take them too).
    args = (
        "--configfile",
        str(REPO / "config" / "mvtec-authors.yaml"),
        str(overrides),
        "--config",
        f"data_root={data}",
        f"authors_repo={authors}",
    )
    jobs = e2e.planned_jobs(workdir, "-p", "support", "embeddings", *args)
    assert jobs == {"select_support": 3, "import_embedding": 3, "support": 1, "embeddings": 1}
    # Generation would need GrabCut only for screw (bottle's defects have templates).
    later = e2e.planned_jobs(workdir, "-p", "generated", *args)
    assert later["estimate_foreground"] == 1 and later["generate_anomalies"] == 3
    # The whole run trains detectors: without DTD it stops before any job, naming the key.
    whole = e2e.run(workdir, "-n", *args, check=False)
    assert whole.returncode != 0 and "detectors.texture_source" in whole.stdout + whole.stderr

    e2e.run(workdir, "support", "embeddings", *args)
    results = workdir / "results"
    assert not (workdir / "resources").exists()  # no model was built or fetched
    for (category, defect), names in PUBLISHED.items():
        (manifest,) = (results / "support" / category / defect).glob("*/manifest.json")
        assert [it["source_image"] for it in support_items(manifest)] == [
            f"{category}/test/{defect}/{n}" for n in sorted(names)
        ]
        (embedding,) = (results / "embeddings" / category / defect).glob("*/learned_embeds.safetensors")
        (vector,) = load_file(str(embedding)).values()
        assert torch.equal(vector, vector_for(category, defect).reshape(1, DIM))
        verify_manifest(embedding.parent / "manifest.json")
    # A second run has nothing to do.
    assert e2e.planned_jobs(workdir, "-p", "support", "embeddings", *args) == {}
