"""N generated images per normal image (``generation.images_per_normal``, the paper's N): a
smaller N is the start of a larger one, and detectors read the first k of a larger set."""

import pytest

from anogen import estimate as est
from anogen.config import deep_update, validate_config
from anogen.detectors.data import load_generated_items
from anogen.detectors.train import train_detector
from anogen.errors import DataError
from anogen.generation.planning import plan_generation
from anogen.io import load_manifest, sha256_file
from tests.test_config_keys import all_keys, changed, demo_raw, plan
from tests.test_detectors_train import _spec
from tests.test_estimate import small_gpu_table
from tests.test_generation_run import SPEC, _generate, make_world

RES = 32
FAST = {"steps": 2, "images_per_box": 2}  # 2 samples per box: N = 3 and 5 end on a partial box


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_world(tmp_path_factory, RES)


@pytest.fixture(scope="module")
def pool(small):
    """N = 5 generated in batches of one, so that every image is sampled as in any other run."""
    return _generate(small, small["work"] / "n5", spec={**FAST, "images_per_normal": 5}, batch_size=1)


def _by_source(manifest_path) -> dict[str, list[dict]]:
    """The manifest's items per normal image, in index_in_image order, with their files' sha256."""
    out: dict[str, list[dict]] = {}
    for item in load_manifest(manifest_path)["extra"]["items"]:
        sha = {f: sha256_file(manifest_path.parent / item[f]) for f in ("image", "mask")}
        out.setdefault(item["source_image"], []).append({**item, "sha256": sha})
    return {source: sorted(items, key=lambda it: it["index_in_image"]) for source, items in out.items()}


def test_n3_is_the_first_3_of_n5(small, pool, tmp_path):
    three = _generate(small, tmp_path / "n3", spec={**FAST, "images_per_normal": 3}, batch_size=1)
    first, larger = _by_source(three), _by_source(pool)
    assert first.keys() == larger.keys() and len(first) == 2
    for source, items in larger.items():
        assert [it["index_in_image"] for it in items] == [0, 1, 2, 3, 4]
        assert [(it["box_index"], it["sample_index"]) for it in items] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
        assert first[source] == items[:3]  # names, boxes, seeds and the sha256 of image and mask


def test_null_images_per_normal_is_boxes_times_samples(small):
    p = plan(demo_raw())
    assert p.config["generation"]["images_per_normal"] is None and p.images_per_normal() == 2 * 2
    explicit = plan(deep_update(demo_raw(), {"generation": {"images_per_normal": 4}}))
    assert all_keys(explicit) == all_keys(p)  # the same jobs: null is boxes_per_image x images_per_box
    kw = dict(normal_images=small["normals"], data_root=small["root"], foreground_manifest=small["fg"], resolution=RES)
    items = plan_generation(spec={**SPEC, "images_per_normal": 4, "images_per_box": 2}, **kw)[2]
    assert [(it.image_index, it.box_index, it.sample_index, it.index_in_image) for it in items] == [
        (i, b, s, 2 * b + s) for i in (0, 1) for b in (0, 1) for s in (0, 1)
    ]


def test_detector_reader_keeps_the_first_k_per_normal_image(small, pool):
    per_source = {s: [it["image"] for it in items] for s, items in _by_source(pool).items()}
    for k in range(1, 6):
        items = load_generated_items([pool], small["normals"], small["root"], per_image=k)
        kept: dict[str, list[str]] = {}
        for item in items:
            kept.setdefault(item.source.relative_to(small["root"]).as_posix(), []).append(item.name)
        assert {s: sorted(names) for s, names in kept.items()} == {s: sorted(n[:k]) for s, n in per_source.items()}
    assert len(load_generated_items([pool], small["normals"], small["root"])) == 10  # no k: every item
    with pytest.raises(DataError) as info:
        load_generated_items([pool], small["normals"], small["root"], per_image=6)
    message = str(info.value)
    assert str(pool) in message and "has 5 generated images" in message and "generated_per_image=6" in message


def test_detector_trains_on_the_first_k_and_records_them(small, pool, tmp_path):
    spec = _spec("draem", "generated_only", draem={"epochs": 1, "batch_size": 2}, generated_per_image=2)
    manifest = train_detector(
        spec=spec,
        train_images=small["normals"],
        generated_manifests=[pool],
        out_dir=tmp_path / "d",
        key="x" * 12,
        inputs={},
        device="cpu",
        checkpoint_every=500,
        data_root=small["root"],
    )
    extra = load_manifest(manifest)["extra"]
    assert extra["generated_per_image"] == 2 and extra["n_generated_per_defect"] == {"broken_large": 2 * 2}


def test_generation_spec_carries_n_not_boxes_per_image():
    p = plan(demo_raw())
    spec = p.spec("generation", "cat_a", "hole")
    assert spec["images_per_normal"] == 4 and "boxes_per_image" not in spec
    assert p.spec("detector", "cat_a", "draem", "anogen")["generated_per_image"] == 4
    assert "generated_per_image" not in p.spec("detector", "cat_a", "draem", "baseline")
    set_n = deep_update(demo_raw(), {"generation": {"images_per_normal": 3}})
    more_boxes = deep_update(set_n, {"generation": {"boxes_per_image": 5}})
    assert all_keys(plan(more_boxes)) == all_keys(plan(set_n))  # N fixes the boxes: nothing reruns
    diff = changed(all_keys(plan(set_n)), all_keys(plan(deep_update(set_n, {"generation": {"images_per_normal": 5}}))))
    assert "generation/cat_a/hole" in diff and "detector/cat_a/draem/anogen" in diff
    assert not any("baseline" in k for k in diff)


def test_estimate_counts_n_images_per_normal_image(tmp_path):
    small_gpu_table(tmp_path)
    generation = {"steps": 10, "images_per_normal": 5, "boxes_per_image": 1, "max_normal_images": 3}
    cfg = {"categories": ["bottle"], "defects": {"bottle": ["contamination"]}, "data_root": str(tmp_path / "none")}
    cfg.update(generation=generation, detectors={"models": ["draem"], "variants": ["anogen"]})
    jobs = {j.name: j for j in est.estimate(validate_config(cfg), results_dir=tmp_path, gpu_model="gpu 9000").jobs}
    assert jobs["generation/bottle/contamination"].work == 3 * 5
