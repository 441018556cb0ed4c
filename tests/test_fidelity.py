"""docs/fidelity.md against the schema and both presets, and each fidelity switch doing what it says."""

from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anogen.config import deep_update, load_schema, validate_config
from anogen.errors import ConfigError, DataError
from anogen.plan import Plan
from tests.test_config_keys import all_keys, changed, demo_raw, plan
from tests.test_detectors_train import _spec as _train_spec
from tests.test_detectors_train import tiny  # noqa: F401 (a fixture)
from tests.test_generation_run import _generate, world  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "docs" / "fidelity.md"


# ----------------------------------------------------------------------------- the ledger


def ledger_rows() -> list[dict[str, str]]:
    """The ledger's table as dicts (header names -> cell text)."""
    lines = [ln for ln in LEDGER.read_text(encoding="utf-8").splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


def _code(cell: str) -> str:
    found = re.fullmatch(r"`([^`]*)`", cell)
    assert found, f"expected one `value` in a ledger cell, got {cell!r}"
    return found.group(1)


def _resolve_ref(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_node(dotted: str) -> dict:
    """The schema of a dotted key (through properties, else additionalProperties); KeyError if none."""
    schema = load_schema()
    node = schema
    for part in dotted.split("."):
        node = _resolve_ref(schema, node)
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            raise KeyError(f"{dotted}: no '{part}' in the schema")
    return _resolve_ref(schema, node)


def preset_value(config: dict, dotted: str):
    """The filled config's value, the schema default of a key in an entry not written out, else None."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return schema_node(dotted).get("default")
        node = node[part]
    return node


def presets() -> dict[str, dict]:
    """Both presets validated (the authors' with its command-line sources set)."""
    mvtec = yaml.safe_load((ROOT / "config" / "mvtec.yaml").read_text())
    authors = yaml.safe_load((ROOT / "config" / "mvtec-authors.yaml").read_text())
    authors = deep_update(authors, {"authors_repo": "/clone"})
    return {"config/mvtec.yaml": validate_config(mvtec), "config/mvtec-authors.yaml": validate_config(authors)}


def test_ledger_names_real_switches_and_the_presets_agree():
    rows = ledger_rows()
    configs = presets()
    assert len(rows) >= 15
    problems = []
    for row in rows:
        switch = _code(row["switch"])
        try:
            schema_node(switch)
        except KeyError as exc:
            problems.append(f"row {row['#']}: {exc}")
            continue
        for name, config in configs.items():
            written = yaml.safe_load(_code(row[f"`{name}`"]))
            actual = preset_value(config, switch)
            if written != actual:
                problems.append(f"row {row['#']}: {switch} is {actual!r} in {name}, the ledger says {written!r}")
        for test in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", row["checked by"]):
            text = (ROOT / test[0]).read_text(encoding="utf-8")
            if test[1] and f"def {test[1]}(" not in text:
                problems.append(f"row {row['#']}: {test[0]} has no {test[1]}")
    assert not problems, "\n".join(problems)


def test_ledger_covers_every_fidelity_switch():
    switches = {_code(r["switch"]) for r in ledger_rows()}
    for key in (
        "detectors.draem.image_interpolation",
        "detectors.destseg.image_interpolation",
        "generation.jpeg_quality",
        "detectors.draem.variant_overrides.anogen",
        "detectors.destseg.teacher",
        "detectors.destseg.tau",
        "detectors.draem.authors_sampling_quirk",
        "category_options.screw.foreground_method",
        "diffusion.scheduler",
        "embedding.scale_lr",
        "detectors.weak_on_synthetic",
        "generation.min_overlap",
    ):
        assert key in switches, key


def test_ledger_rows_from_the_authors_code_cite_file_and_line():
    """Rows whose authors' value the paper contradicts say where in their code it is."""
    rows = {_code(r["switch"]): r for r in ledger_rows()}
    for switch in ("embedding.scale_lr", "detectors.weak_on_synthetic"):
        assert re.search(r"`[\w/.-]+\.(py|yaml|sh)` lines? \d+", rows[switch]["authors' code"]), switch


def test_ledger_catches_a_disagreeing_preset():
    config = presets()["config/mvtec-authors.yaml"]
    assert preset_value(config, "generation.jpeg_quality") == 75
    wrong = deep_update(config, {"generation": {"jpeg_quality": 90}})
    assert preset_value(wrong, "generation.jpeg_quality") != 75
    with pytest.raises(KeyError):
        schema_node("generation.jpeg_qualty")


def test_readme_and_preset_table_link_the_ledger():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/fidelity.md)" in readme[readme.index("Two presets") :][:4000]
    presets = (ROOT / "docs" / "presets.md").read_text(encoding="utf-8")
    assert "](fidelity.md)" in presets[: presets.index("| support sets |")]


# ----------------------------------------------------------------------------- 28: embedding learning rate


def test_scale_lr_gives_the_authors_learning_rate():
    """The authors' main.py: base 0.005 x batch 4 x 1 GPU = 0.02 (the paper states 0.005), in both presets."""
    from anogen.embedding.trainer import effective_learning_rate

    for name, config in presets().items():
        spec = config["embedding"]
        assert (spec["learning_rate"], spec["batch_size"], spec["scale_lr"]) == (0.005, 4, True), name
        assert effective_learning_rate(spec) == pytest.approx(0.02), name
        assert effective_learning_rate({**spec, "scale_lr": False}) == pytest.approx(0.005), name
    assert effective_learning_rate(spec, n_devices=2) == pytest.approx(0.04)  # their ngpu factor


# ----------------------------------------------------------------------------- 1-2: resize kernels


def _fine_texture(size: int = 200) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 90 * np.sin(xx * 1.3) * np.cos(yy * 0.7)
    img = np.stack([base, base * 0.8 + 20, 255 - base], -1) + rng.normal(0, 10, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_resize_kernels_give_the_codes_bytes(tmp_path):
    from anogen.data.interpolation import load_square_rgb
    from anogen.detectors.data import load_rgb

    path = tmp_path / "x.png"
    Image.fromarray(_fine_texture()).save(path)
    # DRAEM's loader: cv2.imread (BGR) + cv2.resize (INTER_LINEAR), compared in RGB
    draem = cv2.resize(cv2.imread(str(path)), (64, 64))[..., ::-1]
    assert np.array_equal(load_rgb(path, 64, "squash", "cv2_linear"), draem)
    # DeSTSeg's loader: a PIL image through Pillow's bilinear resize (torchvision's Resize on PIL)
    destseg = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    assert np.array_equal(load_rgb(path, 64, "squash", "pil_bilinear"), destseg)
    bicubic = load_square_rgb(path, 64, "squash", "pil_bicubic")
    for a, b in ((draem, destseg), (draem, bicubic), (destseg, bicubic)):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0  # the kernels really differ
    with pytest.raises(ValueError, match="interpolation"):
        load_square_rgb(path, 64, "squash", "lanczos")


def test_resize_kernel_reaches_its_detector_and_evaluation_only():
    base = all_keys(plan(demo_raw()))
    new = all_keys(plan(deep_update(demo_raw(), {"detectors": {"draem": {"image_interpolation": "pil_bicubic"}}})))
    diff = changed(base, new)
    assert diff == {k for k in base if k.startswith(("detector/", "evaluation/")) and "/draem/" in k}
    p = plan(demo_raw())
    assert p.spec("evaluation", "cat_a", "destseg", "anogen")["image_interpolation"] == "pil_bilinear"
    assert p.spec("detector", "cat_a", "draem", "baseline")["draem"]["image_interpolation"] == "cv2_linear"


# ----------------------------------------------------------------------------- 3: JPEG q75


def test_jpeg_switch_writes_the_authors_bytes(tmp_path):
    from anogen.generation.planning import PlannedImage
    from anogen.generation.resume import save_generated_image

    arr = _fine_texture(64)
    theirs = io.BytesIO()
    Image.fromarray(arr).save(theirs, format="JPEG")  # their txt2img.py: .save(".../0000.jpg"), no quality
    save_generated_image(tmp_path / "a.jpg", arr, 75)
    assert (tmp_path / "a.jpg").read_bytes() == theirs.getvalue()
    decoded = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    assert np.array_equal(decoded, cv2.imread(str(tmp_path / "a.jpg"))[..., ::-1])  # DRAEM fork's decoder
    assert 0 < np.abs(decoded.astype(int) - arr.astype(int)).mean()  # lossy, as theirs
    save_generated_image(tmp_path / "b.png", arr, None)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)
    item = PlannedImage("n_b0_s0.png", 0, 0, 0, 0, None, 1, image_suffix=".jpg")
    assert item.image == "images/n_b0_s0.jpg" and item.mask == "masks/n_b0_s0.png"


def test_jpeg_generated_set_is_recorded_and_read_by_the_detectors(world, tmp_path):  # noqa: F811 (the fixture)
    """A generated set with jpeg_quality 75: .jpg images, the format in the manifest, the
    detectors' reader takes them; the same pixels as the PNG set, JPEG-compressed."""
    from anogen.detectors.data import load_generated_items
    from anogen.io import load_manifest

    manifest = _generate(world, tmp_path / "jpeg", spec={"jpeg_quality": 75})
    m = load_manifest(manifest)
    assert m["extra"]["image_format"] == {"format": "jpeg", "quality": 75}
    assert load_manifest(world["reference"])["extra"]["image_format"] == {"format": "png"}
    items = m["extra"]["items"]
    assert all(it["image"].endswith(".jpg") and it["mask"].endswith(".png") for it in items)
    jpeg = (tmp_path / "jpeg" / items[0]["image"]).read_bytes()
    assert jpeg[:3] == b"\xff\xd8\xff"
    png = np.asarray(Image.open(world["reference"].parent / items[0]["image"].replace(".jpg", ".png")).convert("RGB"))
    theirs = io.BytesIO()
    Image.fromarray(png).save(theirs, format="JPEG")  # the PNG set's pixels saved as their script did
    assert jpeg == theirs.getvalue()
    loaded = load_generated_items([manifest], world["normals"], world["root"])
    assert len(loaded) == len(items) and loaded[0].image.suffix == ".jpg"


def test_jpeg_switch_reaches_the_generated_sets_and_what_reads_them():
    base = all_keys(plan(demo_raw()))
    diff = changed(base, all_keys(plan(deep_update(demo_raw(), {"generation": {"jpeg_quality": 75}}))))
    assert kinds(diff) == {"generation", "detector", "evaluation"}
    assert not any("/baseline" in k for k in diff)


def kinds(names):
    return {n.split("/")[0] for n in names}


# ----------------------------------------------------------------------------- 4-8: per-variant recipes


def test_variant_overrides_change_only_their_variant():
    over = {"detectors": {"draem": {"variant_overrides": {"anogen": {"batch_size": 16, "schedule": "anogen"}}}}}
    base = all_keys(plan(demo_raw()))
    p = plan(deep_update(demo_raw(), over))
    diff = changed(base, all_keys(p))
    assert diff == {k for k in base if k.startswith(("detector/", "evaluation/")) and k.endswith("/draem/anogen")}
    anogen = p.spec("detector", "cat_a", "draem", "anogen")["draem"]
    baseline = p.spec("detector", "cat_a", "draem", "baseline")["draem"]
    assert (anogen["batch_size"], anogen["schedule"]) == (16, "anogen")
    assert (baseline["batch_size"], baseline["schedule"]) == (8, "original")
    assert "variant_overrides" not in anogen and "variant_overrides" not in baseline
    # the authors' preset: baseline = official DRAEM, anogen = the fork
    cfg = presets()["config/mvtec-authors.yaml"]
    assert cfg["detectors"]["draem"]["batch_size"] == 8
    assert cfg["detectors"]["draem"]["variant_overrides"]["anogen"] == {"batch_size": 16, "schedule": "anogen"}
    with pytest.raises(ConfigError) as err:
        validate_config(
            deep_update(demo_raw(), {"detectors": {"draem": {"variant_overrides": {"anogen": {"tau": 1}}}}})
        )
    assert err.value.key.startswith("detectors.draem.variant_overrides.anogen")


def test_estimate_reads_the_overridden_recipe():
    over = {"detectors": {"draem": {"variant_overrides": {"anogen": {"epochs": 3}}}}}
    p = plan(deep_update(demo_raw(), over))
    assert p.detector_section("draem", "anogen")["epochs"] == 3
    assert p.detector_section("draem", "baseline")["epochs"] == p.config["detectors"]["draem"]["epochs"]


# ----------------------------------------------------------------------------- 9: the timm teacher


def _resnet18_state() -> dict[str, torch.Tensor]:
    from anogen.detectors.destseg.network import ResNet18Features

    net = ResNet18Features(4)
    state = {}
    for key, value in net.state_dict().items():  # back to torchvision / timm names
        if key.startswith("layers."):
            idx, rest = key[len("layers.") :].split(".", 1)
            key = f"layer{int(idx) + 1}.{rest}"
        state[key] = value.clone()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    return state


def test_timm_teacher_is_asked_for_and_recorded(tmp_path):
    from safetensors.torch import save_file

    from anogen.config import check_required_sources
    from anogen.detectors.destseg.trainer import load_teacher_weights
    from anogen.io import sha256_file
    from anogen.provenance import check_teacher_file

    path = tmp_path / "model.safetensors"  # timm's published file: torchvision's tensor names
    save_file(_resnet18_state(), str(path))
    state, info = load_teacher_weights(path, "timm_a1")
    assert info["teacher_source"] == "timm_a1" and info["teacher_layout"] == "torchvision"
    assert info["teacher_weights"]["sha256"] == sha256_file(path) and "layer3.1.bn2.weight" in state
    with pytest.raises(ConfigError) as err:
        load_teacher_weights(None, "timm_a1")
    assert err.value.key == "detectors.destseg.teacher_weights" and "huggingface.co/timm/resnet18.a1_in1k" in str(
        err.value
    )
    with pytest.raises(DataError, match="torchvision"):
        check_teacher_file("timm_a1", path, "f37072fd" + "0" * 56)
    check_teacher_file("torchvision_v1", path, "f37072fd" + "0" * 56)
    cfg = validate_config({"data_root": "x", "detectors": {"destseg": {"teacher": "timm_a1"}}})
    with pytest.raises(ConfigError):
        check_required_sources(cfg)
    # the teacher is part of the DeSTSeg keys only
    diff = changed(
        all_keys(plan(demo_raw())),
        all_keys(plan(deep_update(demo_raw(), {"detectors": {"destseg": {"teacher": "timm_a1"}}}))),
    )
    assert diff and all("/destseg/" in k for k in diff)


def test_destseg_manifest_records_teacher_and_kernel(tiny, tmp_path):  # noqa: F811 (the fixture)
    """A DeSTSeg trained with timm's file: the manifest says which teacher, its sha256 and layout, the kernel."""
    import json

    from safetensors.torch import save_file

    from anogen.detectors.train import train_detector
    from anogen.io import sha256_file

    teacher = tmp_path / "model.safetensors"
    save_file(_resnet18_state(), str(teacher))
    over = {"steps": 2, "student_steps": 1, "teacher": "timm_a1"}
    spec = _train_spec("destseg", "baseline", destseg={**over, "image_interpolation": "pil_bilinear"})
    manifest = train_detector(
        spec=spec,
        train_images=tiny["train"],
        generated_manifests=[],
        out_dir=tmp_path / "d",
        key="x" * 12,
        inputs={},
        device="cpu",
        checkpoint_every=500,
        teacher_weights=str(teacher),  # a runtime path: the file's content is the plan's inputs["teacher"]
    )
    extra = json.loads(manifest.read_text())["extra"]
    assert (extra["teacher"], extra["teacher_source"], extra["teacher_layout"]) == (
        "imagenet",
        "timm_a1",
        "torchvision",
    )
    assert extra["teacher_weights"]["sha256"] == sha256_file(teacher)
    assert extra["teacher_weights"]["bytes"] == teacher.stat().st_size
    assert extra["teacher_weights"]["mtime_ns"] == teacher.stat().st_mtime_ns
    # what the plan keys the DeSTSeg detectors with (anogen.plan.Plan.teacher_key)
    config = deep_update(demo_raw(), {"detectors": {"destseg": {"teacher_weights": str(teacher)}}})
    assert extra["teacher_weights"]["fingerprint"] == plan(config).teacher_key()
    assert extra["image_interpolation"] == "pil_bilinear" and extra["authors_sampling_quirk"] is None


# ----------------------------------------------------------------------------- 13: the sampling quirk


def _items(category: str, defects: list[str], per_defect: int):
    from anogen.detectors.data import GeneratedItem

    return [
        GeneratedItem(Path(f"{d}/{i}.png"), Path(f"{d}/m{i}.png"), Path("n.png"), Path("m.json"), f"{d}_{i}", d)
        for d in defects
        for i in range(per_defect)
    ]


def test_sampling_quirk_keeps_the_authors_fractions():
    from anogen.detectors.data import authors_sampling_quirk

    capsule = ["crack", "faulty_imprint", "poke", "scratch", "squeeze"]
    cable = ["bent_wire", "cable_swap", "combined", "cut_inner_insulation", "cut_outer_insulation"]
    cable += ["missing_cable", "missing_wire", "poke_insulation"]
    # their sets: 4 images per training image (219 capsule, 224 cable) and defect
    kept, report = authors_sampling_quirk(_items("capsule", capsule, 4 * 219), "capsule", 0)
    assert report["poke"]["fraction"] == pytest.approx(0.17, abs=0.03)
    assert all(report[d]["fraction"] == 1.0 for d in capsule if d != "poke")
    assert len(kept) == sum(r["kept"] for r in report.values())
    _, report = authors_sampling_quirk(_items("cable", cable, 4 * 224), "cable", 0)
    assert report["cable_swap"]["fraction"] == pytest.approx(0.11, abs=0.03)
    assert report["poke_insulation"]["fraction"] == 1.0
    items = _items("bottle", ["broken_large", "contamination"], 20)
    assert authors_sampling_quirk(items, "bottle", 0)[0] == items
    # the same as their loop over file names in the same order
    names = [f"{d}-{i}" for d in capsule for i in range(50)]
    order = np.random.default_rng([0, 0x11D1]).permutation(len(names))
    listing = [names[i] for i in order]
    for x in listing:
        if "poke" in x:
            listing.remove(x)
    kept, _ = authors_sampling_quirk(_items("capsule", capsule, 50), "capsule", 0)
    assert sorted(f"{it.defect}-{it.name.rsplit('_', 1)[1]}" for it in kept) == sorted(listing)


def test_sampling_quirk_applies_to_the_training_set(tiny, tmp_path):  # noqa: F811 (the fixture)
    """train_detector's generated items under the switch: capsule/poke thinned, the report kept."""
    import shutil

    from anogen.detectors.train import _generated_items
    from anogen.io import load_manifest, write_manifest

    gen = tmp_path / "gen"
    shutil.copytree(tiny["manifest"].parent, gen)
    old = load_manifest(tiny["manifest"])
    (gen / "manifest.json").unlink()
    manifest = write_manifest(
        gen,
        stage="generation",
        key="gen000000000",
        spec={"defect": "poke"},
        files=list(old["files"]),
        extra=old["extra"],
    )
    spec = {"variant": "anogen", "category": "capsule", "seed": 0, "authors_sampling_quirk": True}
    items, report = _generated_items(spec, [manifest], tiny["train"], tiny["root"])
    assert report["poke"]["n"] == 8 and report["poke"]["kept"] == len(items) < 8
    items, report = _generated_items({**spec, "authors_sampling_quirk": False}, [manifest], tiny["train"], tiny["root"])
    assert len(items) == 8 and report is None
    assert _generated_items({**spec, "variant": "baseline"}, [manifest], tiny["train"], tiny["root"]) == ([], None)


def test_sampling_quirk_reaches_the_anogen_draem_detectors_only():
    base = all_keys(plan(demo_raw()))
    new = all_keys(plan(deep_update(demo_raw(), {"detectors": {"draem": {"authors_sampling_quirk": True}}})))
    diff = changed(base, new)
    assert diff == {k for k in base if k.startswith(("detector/", "evaluation/")) and k.endswith("/draem/anogen")}


# ----------------------------------------------------------------------------- 14-15: screw on Otsu


def _screw_like(size: int = 300) -> np.ndarray:
    img = np.full((size, size, 3), 200, np.uint8)  # bright background, as MVTec screw
    cv2.ellipse(img, (size // 2, size // 2), (size // 3, size // 10), 30, 0, 360, (60, 60, 60), -1)
    return img


def test_otsu_foreground_is_the_authors_mask(tmp_path):
    from anogen.generation.foreground import authors_otsu, build_foreground_set
    from anogen.generation.planning import _box_region

    image = _screw_like(512)  # MVTec screw is 1024 px: an integer multiple of 256, as here
    path = tmp_path / "data" / "screw" / "train" / "good" / "000.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(image).save(path)
    # their creatMask_v2.py, step by step, on the file as cv2 reads it
    img = cv2.resize(cv2.imread(str(path)), (256, 256))
    _, thresh = cv2.threshold(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if thresh[0][0] == 255:
        thresh = cv2.bitwise_not(thresh)
    theirs = cv2.morphologyEx(thresh, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    ours = authors_otsu(np.asarray(Image.open(path).convert("RGB")))
    assert np.array_equal(ours * 255, theirs)
    assert ours[128, 128] == 1 and ours[0, 0] == 0  # the dark screw, not the bright background
    manifest = build_foreground_set(
        image_paths=[path],
        data_root=tmp_path / "data",
        texture=False,
        template=None,
        iterations=1,
        out_dir=tmp_path / "fg",
        key="k",
        inputs={},
        spec={"category": "screw"},
        method="otsu_authors",
    )
    m = yaml.safe_load(manifest.read_text())
    assert m["extra"]["methods"] == {"otsu_authors": 1}
    spec = {"category": "screw", "defect": "d", "resize": "squash", "min_overlap": 0.5, "foreground_containment": 0.75}
    where = _box_region(spec, None, manifest, 256)
    assert (where.overlap, where.strict) == (0.75, True)
    assert np.array_equal(where.region(path, "screw/train/good/000.png"), ours)  # exact round trip at 256 px


def test_otsu_foreground_keys():
    over = {"category_options": {"cat_a": {"foreground_method": "otsu_authors"}}}
    base = all_keys(plan(demo_raw()))
    p = plan(deep_update(demo_raw(), over))
    diff = changed(base, all_keys(p))
    assert "foreground/cat_a" in diff and not any("cat_b" in k for k in diff)
    assert not any(k.startswith(("support", "embedding")) or "/baseline" in k for k in diff)
    assert p.spec("foreground", "cat_a")["method"] == "otsu_authors"
    assert p.spec("generation", "cat_a", "hole")["foreground_containment"] == 0.75
    assert plan(demo_raw()).spec("foreground", "cat_b")["method"] is None  # a texture reads no method
    cfg = presets()["config/mvtec-authors.yaml"]
    assert Plan(cfg, layout={"screw": {"defects": ["thread_top"], "texture": False}}).foreground_method("screw") == (
        "otsu_authors"
    )


# ----------------------------------------------------------------------------- the preset, planned


@pytest.mark.e2e
def test_authors_preset_dry_run_over_a_full_fake_tree(tmp_path):
    """The authors' preset plans a whole run over MVTec's 15 categories: screw (no published
    template) on the Otsu foreground, every switch of the ledger set."""
    import shutil

    from tests import e2e
    from tests.fake_trees import build_fake_authors_repo, build_fake_mvtec

    data = build_fake_mvtec(tmp_path / "mvtec")
    authors = build_fake_authors_repo(tmp_path / "AnoGen", data)
    shutil.rmtree(authors / "DIFFUSION" / "images" / "mask_template" / "screw")  # as published
    teacher = tmp_path / "model.safetensors"
    teacher.write_bytes(b"not read by a dry run")
    local = tmp_path / "local.yaml"
    local.write_text(
        yaml.safe_dump({"detectors": {"texture_source": str(tmp_path), "destseg": {"teacher_weights": str(teacher)}}})
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = ("--configfile", str(ROOT / "config" / "mvtec-authors.yaml"), str(local))
    args += ("--config", f"data_root={data}", f"authors_repo={authors}")
    jobs = e2e.planned_jobs(workdir, "-p", "all", *args)
    assert jobs["generate_anomalies"] == 72 and jobs["estimate_foreground"] == 1  # screw only
    assert jobs["train_detector"] == 60 and jobs["evaluate_detector"] == 60
