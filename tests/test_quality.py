"""Generation quality (anogen.quality): reference values, IC-LPIPS by hand, no downloads, the CLI, the rule.

The feature networks are randomly initialised files written here (never downloaded), so the numbers
only check the code paths and the reference identities, and every row carries the random-weights note.
"""

from __future__ import annotations

import csv
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anogen import provenance
from anogen.errors import ConfigError, DataError
from anogen.quality import metrics as M
from anogen.quality.networks import load_inception, load_lpips, write_random_weights
from anogen.quality.table import COLUMNS, NOT_CONFIGURED, PEERS, per_category, quality_html

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("quality_weights")
    paths = {"inception": folder / "inception.pth", "lpips": folder / "vgg16.pth"}  # vgg: the default net
    write_random_weights(paths["inception"], paths["lpips"], "vgg", seed=0)
    return paths


@pytest.fixture(scope="module")
def nets(weights):
    return {"inception": load_inception(weights["inception"]), "lpips": load_lpips(weights["lpips"], "vgg")}


def _images(n: int, seed: int, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_inception_score_of_one_repeated_image_is_one(nets):
    repeated = M.as_uint8_tensor(_images(1, 0) * 4, 48)
    logits = M.inception_features(nets["inception"], repeated, 4, "cpu")["logits_unbiased"]
    out = M.inception_score(logits, splits=2, seed=2020)
    assert out["is_mean"] == pytest.approx(1.0, abs=1e-9) and out["is_std"] == pytest.approx(0.0, abs=1e-9)
    varied = M.inception_features(nets["inception"], M.as_uint8_tensor(_images(4, 1), 48), 4, "cpu")
    assert M.inception_score(varied["logits_unbiased"], splits=1, seed=2020)["is_mean"] > 1.0


def test_inception_score_on_fewer_images_than_splits_is_empty_with_a_note(nets):
    logits = M.inception_features(nets["inception"], M.as_uint8_tensor(_images(5, 1), 48), 4, "cpu")
    out = M.inception_score(logits["logits_unbiased"], splits=10, seed=2020)
    assert out["is_mean"] is None and out["is_std"] is None
    assert out["notes"] == ["IS empty: 5 images, fewer than quality.is_splits=10 (one split needs one)"]
    assert M.inception_score(logits["logits_unbiased"], splits=5, seed=2020)["is_mean"] == pytest.approx(1.0)


def test_kid_of_identical_sets_is_near_zero_and_of_different_sets_is_not():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(2000, 64)))
    twin = torch.from_numpy(rng.normal(size=(2000, 64)))  # another sample of the same distribution
    shifted = torch.from_numpy(rng.normal(loc=0.5, size=(2000, 64)))
    same = M.kid(a, a, subsets=50, subset_size=50, seed=2020)
    other = M.kid(a, shifted, subsets=50, subset_size=50, seed=2020)
    assert abs(same["kid_mean"]) < 0.02 * other["kid_mean"]
    assert abs(M.kid(a, twin, subsets=50, subset_size=50, seed=2020)["kid_mean"]) < 0.02 * other["kid_mean"]
    assert other["kid_mean"] > 0 and other["notes"] == []
    # fewer images than a subset in either set: empty with a note (torch-fidelity refuses; no silent cap)
    for small in (M.kid(a[:10], shifted, subsets=5, subset_size=11, seed=2020), M.kid(a, a[:3], 5, 11, 2020)):
        assert small["kid_mean"] is None and small["kid_std"] is None
        assert small["notes"][0].startswith("KID empty:") and "quality.kid_subset_size=11" in small["notes"][0]
    assert M.kid(a[:11], shifted[:11], subsets=5, subset_size=11, seed=2020)["kid_mean"] is not None


def test_lpips_of_identical_images_is_zero(nets):
    images = M.lpips_input(M.as_uint8_tensor(_images(3, 2), 48))
    assert min(float(im.min()) for im in images) >= -1 and max(float(im.max()) for im in images) <= 1
    distance = M.lpips_distance(nets["lpips"], 2, "cpu")
    assert np.all(distance(images, images) == 0)
    assert np.all(distance(images, images[::-1])[[0, 2]] > 0)


def test_ic_lpips_matches_a_hand_computation():
    # centres 0 and 1; 0.3 is nearer 0, 5.0 nearer 1; the third centre (100) gets no member
    generated = [0.0, 0.2, 0.3, 1.0, 1.4, 5.0]
    out = M.ic_lpips(generated, [0.0, 1.0, 100.0], lambda a, b: np.abs(np.subtract(a, b)))
    # cluster 0: |0-.2|, |0-.3|, |.2-.3| -> 0.2; cluster 1: .4, 4.0, 3.6 -> 8/3
    assert out["ic_lpips"] == pytest.approx((0.2 + 8 / 3) / 2)
    assert out["clusters"] == [3, 3, 0]
    assert M.ic_lpips([0.0, 5.0], [0.0, 5.0], lambda a, b: np.abs(np.subtract(a, b)))["ic_lpips"] is None
    # a tie goes to the later centre (AnomalyDiffusion's `dist <= min_dist` scan): 0.5 joins 1.0's cluster
    tie = M.ic_lpips([0.0, 0.5, 1.0], [0.0, 1.0], lambda a, b: np.abs(np.subtract(a, b)))
    assert tie["clusters"] == [1, 2] and tie["ic_lpips"] == pytest.approx(0.5)


def test_ic_lpips_cluster_cap_keeps_a_seeded_random_choice_of_members():
    generated = [0.0, 0.1, 0.3, 0.7, 1.5]  # one cluster of five
    dist = lambda a, b: np.abs(np.subtract(a, b))  # noqa: E731
    capped = M.ic_lpips(generated, [0.0], dist, cap=2, seed=3)
    assert capped["clusters"] == [5]  # the members before the cap
    pair_values = {abs(x - y) for i, x in enumerate(generated) for y in generated[i + 1 :]}
    assert any(capped["ic_lpips"] == pytest.approx(v) for v in pair_values)  # the mean of one pair
    assert capped == M.ic_lpips(generated, [0.0], dist, cap=2, seed=3)
    assert M.ic_lpips(generated, [0.0], dist, cap=5) == M.ic_lpips(generated, [0.0], dist)


def test_box_crop_is_the_square_around_the_grown_box_inside_the_image():
    image = np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 8:12] = 1  # 10 x 4, centre (10, 10)
    assert M.crop_window(mask, 0.1) == (4, 4, 12)  # side round(10 x 1.2), centred
    assert M.box_crop(image, mask, 0.1).shape == (12, 12, 3)
    edge = np.zeros((20, 20), np.uint8)
    edge[0:4, 15:20] = 1  # at a corner: the square is shifted inside the image, not cut
    assert M.crop_window(edge, 0.5) == (0, 10, 10)
    assert M.crop_window(edge, 1.0) == (0, 5, 15)
    assert M.crop_window(mask, 1.0) == (0, 0, 20)  # at most the image
    assert M.box_crop(image, np.zeros_like(mask), 0.1) is image


def test_generated_and_real_crops_follow_one_rule(tmp_path):
    """A generated image's box mask and a real image's irregular mask with the same box, at other sizes: one crop."""
    from anogen.quality.run import read_item, square_item

    generated = np.zeros((128, 128, 3), np.uint8)
    box = np.zeros((128, 128), np.uint8)
    box[32:64, 40:56] = 1  # the inpainting box: 32 x 16
    real = np.full((256, 256, 3), 200, np.uint8)
    yy, xx = np.mgrid[:256, :256]
    ellipse = ((yy - 95.5) / 32) ** 2 + ((xx - 95.5) / 16) ** 2 <= 1  # tight box rows 64:128, cols 80:112
    Image.fromarray(real).save(tmp_path / "real.png")
    Image.fromarray((ellipse * 255).astype(np.uint8)).save(tmp_path / "real_mask.png")
    gen_item = square_item(generated, box, 64, "squash")
    real_item = read_item(tmp_path / "real.png", tmp_path / "real_mask.png", 64, "squash")
    assert gen_item[0].shape == real_item[0].shape == (64, 64, 3)
    assert M.crop_window(gen_item[1], 0.1) == M.crop_window(real_item[1], 0.1) == (14, 14, 19)  # round(16 x 1.2)
    crops = [M.box_crop(im, m, 0.1) for im, m in (gen_item, real_item)]
    assert crops[0].shape == crops[1].shape == (19, 19, 3)
    assert M.as_uint8_tensor(crops, 64).shape == (2, 3, 64, 64)  # both resized with RESIZE_KERNEL


def test_weights_are_never_downloaded(weights, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    load_inception(weights["inception"])
    load_lpips(weights["lpips"], "vgg")


def test_missing_or_wrong_weights_fail_naming_the_key(weights, tmp_path):
    from anogen.quality.networks import weights_info

    with pytest.raises(ConfigError, match="quality.inception_weights"):
        weights_info(None, "quality.inception_weights")
    with pytest.raises(DataError, match="not a file"):
        weights_info(tmp_path / "absent.pth", "quality.lpips_weights")
    with pytest.raises(DataError, match="quality.lpips_weights"):
        load_lpips(weights["inception"], "vgg")  # Inception tensors have no features.*
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="not a torchvision alex"):
        load_lpips(tmp_path / "bad.pth", "alex")


def _write_folder(folder: Path, images, masks: Path | None = None) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        if masks is not None:
            masks.mkdir(parents=True, exist_ok=True)
            mask = np.zeros(image.shape[:2], np.uint8)
            mask[8:24, 10 + i % 8 : 30] = 255
            Image.fromarray(mask).save(masks / f"{i:03d}_mask.png")
    return folder


def _quality_args(weights, out: Path, *sets: tuple[str, Path, Path | None]) -> list[str]:
    args = ["quality", "--out", str(out), "--device", "cpu"]
    args += ["--inception-weights", str(weights["inception"]), "--lpips-weights", str(weights["lpips"])]
    for name, folder, masks in sets:
        args += [f"--{name}", str(folder)] + ([f"--{name}-masks", str(masks)] if masks else [])
    return args


def _row(out: Path) -> dict[str, str]:
    with out.open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        (row,) = list(reader)
    return row


def test_anogen_quality_on_a_folder_not_made_by_the_pipeline(weights, tmp_path, capsys):
    from anogen.cli import main

    peer = tmp_path / "peer_release" / "bottle" / "broken_large"  # e.g. a peer's released set
    _write_folder(peer / "image", _images(6, 3, 40), peer / "mask")
    _write_folder(tmp_path / "real", _images(4, 4, 64), tmp_path / "real_masks")
    _write_folder(tmp_path / "support", _images(2, 5, 64), tmp_path / "support_masks")
    out = tmp_path / "q.csv"
    sets = [("generated", peer / "image", peer / "mask"), ("real", tmp_path / "real", tmp_path / "real_masks")]
    sets.append(("support", tmp_path / "support", tmp_path / "support_masks"))
    args = _quality_args(weights, out, *sets)
    settings = ["quality.kid_subsets=5", "quality.kid_subset_size=3", "quality.is_splits=3", "quality.image_size=64"]
    assert main([*args, "--set", *settings]) == 0
    assert "NOTE: " + provenance.RANDOM_QUALITY_WEIGHTS in capsys.readouterr().out
    row = _row(out)
    assert (row["n_generated"], row["n_real"], row["n_centres"]) == ("6", "4", "2")
    for column in ("is_mean", "ic_lpips", "kid_mean", "crop_is_mean", "crop_ic_lpips", "crop_kid_mean"):
        assert row[column] != "", column
    assert float(row["is_mean"]) >= 1.0 and float(row["ic_lpips"]) >= 0
    assert (row["kid_subsets"], row["kid_subset_size"], row["image_size"], row["is_splits"]) == ("5", "3", "64", "3")
    assert row["inception_sha256"] and row["lpips_net"] == "vgg" and row["torch_fidelity_version"] == "0.4.0"
    assert (row["ic_lpips_centres"], row["ic_lpips_cluster_cap"]) == ("support", "")
    assert row["crop_rule"] == M.CROP_RULE and row["resize_kernel"] == M.RESIZE_KERNEL
    assert row["note"] == provenance.RANDOM_QUALITY_WEIGHTS
    # the defaults: 6 images < 10 IS splits and < 1000 per KID subset: empty, with the reasons in the note
    assert main([*args, "--set", "quality.image_size=64"]) == 0
    row = _row(out)
    assert row["is_mean"] == row["is_std"] == row["kid_mean"] == row["crop_is_mean"] == row["crop_kid_mean"] == ""
    assert "IS empty: 6 images, fewer than quality.is_splits=10" in row["note"]
    assert "KID empty: 6 generated and 4 real images, fewer than quality.kid_subset_size=1000" in row["note"]
    assert row["ic_lpips"] and provenance.RANDOM_QUALITY_WEIGHTS in row["note"]
    # no support: IC-LPIPS is left empty, the rest is computed; no weights: the key is named
    at = args.index("--support")
    assert main([*args[:at], *args[at + 4 :], "--set", *settings]) == 0
    row = _row(out)
    assert row["ic_lpips"] == "" and row["n_centres"] == "0" and row["is_mean"] and row["kid_mean"]
    # real images without masks: no crop KID (generated crops are not compared with whole images)
    at = args.index("--real-masks")
    assert main([*args[:at], *args[at + 2 :], "--set", *settings]) == 0
    row = _row(out)
    assert row["kid_mean"] and row["crop_kid_mean"] == "" and row["crop_is_mean"] and row["crop_ic_lpips"]
    assert main(["quality", "--generated", str(peer / "image"), "--out", str(out)]) == 2
    assert "quality.inception_weights" in capsys.readouterr().err


def test_anogen_quality_on_five_images_leaves_is_empty_with_a_note(weights, tmp_path):
    from anogen.cli import main

    _write_folder(tmp_path / "gen", _images(5, 3, 40))
    out = tmp_path / "q.csv"
    assert (
        main([*_quality_args(weights, out, ("generated", tmp_path / "gen", None)), "--set", "quality.image_size=48"])
        == 0
    )
    row = _row(out)
    assert row["n_generated"] == "5" and row["is_mean"] == "" and row["is_std"] == "" and row["is_splits"] == "10"
    assert "IS empty: 5 images, fewer than quality.is_splits=10" in row["note"]


def test_anogen_quality_reads_a_folder_tree_without_its_masks_and_the_configs_resize(weights, tmp_path, monkeypatch):
    """AnomalyDiffusion's layout <defect>/{image,mask,ori}: only image/ is read; elsewhere mask folders are skipped."""
    from anogen.quality import run
    from anogen.quality.run import folder_images, image_folder

    tree = tmp_path / "gen" / "broken_large"
    _write_folder(tree / "image", _images(3, 1, 40), tree / "mask")
    _write_folder(tree / "ori", _images(2, 2, 40))
    assert image_folder(tree) == tree / "image" and len(folder_images(image_folder(tree))) == 3
    flat = tmp_path / "flat"
    _write_folder(flat / "a", _images(2, 1, 40), flat / "a" / "masks")
    (flat / "ground_truth").mkdir()
    Image.fromarray(_images(1, 1, 40)[0]).save(flat / "ground_truth" / "x.png")
    Image.fromarray(_images(1, 1, 40)[0]).save(flat / "a" / "003_mask.png")
    assert [p.relative_to(flat).as_posix() for p in folder_images(flat)] == ["a/000.png", "a/001.png"]
    given = tmp_path / "g2"
    _write_folder(given / "imgs", _images(2, 1, 40), given / "labels")
    assert len(folder_images(given, masks=given / "labels")) == 2  # the --*-masks folder, whatever its name
    # `resize` comes from the config given: a 40 x 20 image padded (black band), not squashed
    seen = []
    monkeypatch.setattr(run, "compute_row", lambda g, *a, **k: seen.append(g) or {"notes": []})
    wide = tmp_path / "wide"
    wide.mkdir()
    Image.fromarray(np.full((20, 40, 3), 255, np.uint8)).save(wide / "w.png")
    quality = {"image_size": 40, "ic_lpips_centres": "support", "batch_size": 1}
    run.folder_quality(generated=wide, real=None, support=None, masks={}, quality=quality, resize="pad",
                       weights={}, device="cpu")  # fmt: skip
    image = seen[0][0][0]
    assert image.shape == (40, 40, 3) and image[0].max() == 0 and image[20].min() == 255


def _anomalydiffusion_ic_lpips(lpips_file: Path, mvtec: Path, gen: Path, size: int) -> float:
    """AnomalyDiffusion's cal_ic_lpips.py rule, written here from the script (upstream b85297f), for one defect:
    LPIPS-VGG, torchvision Resize([size, size]) + ToTensor + Normalize(0.5, 0.5); centres test/<defect>/%03d.png,
    k < len(listdir) // 3; each generated image to the centre with the smallest distance (`<=`: the last on a
    tie); per cluster at most 50 shuffled members, the mean LPIPS of every pair; the mean over non-NaN clusters.
    The backbone gets the random file's features.* through LPIPS's own state dict (not anogen's loader)."""
    import os
    import random

    import lpips
    from torchvision import transforms

    model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    state = torch.load(lpips_file, weights_only=True)
    model.net.load_state_dict({k: state["features." + k.split(".", 1)[1]] for k in model.net.state_dict()})
    preprocess = transforms.Compose(
        [transforms.Resize([size, size]), transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    )

    def load(path):
        return preprocess(Image.open(path).convert("RGB"))[None]

    n_centres = len(os.listdir(mvtec)) // 3
    centres = [load(mvtec / f"{k:03d}.png") for k in range(n_centres)]
    clusters: list[list[Path]] = [[] for _ in range(n_centres)]
    with torch.no_grad():
        for name in os.listdir(gen):
            image, best, chosen = load(gen / name), float("inf"), -1
            for k, centre in enumerate(centres):
                d = float(model(centre, image))
                if d <= best:
                    best, chosen = d, k
            clusters[chosen].append(gen / name)
        means = []
        for members in clusters:
            random.shuffle(members)
            members = members[:50]
            d = [float(model(load(a), load(b))) for i, a in enumerate(members) for b in members[i + 1 :]]
            means.append(float(np.mean(d)) if d else float("nan"))
    return float(np.nanmean(means))


def test_ic_lpips_agrees_with_anomalydiffusions_script(weights, tmp_path, capsys):
    """Same images, same random VGG weights: our IC-LPIPS (test_first_third, cap 50) and the script's rule agree
    to 1e-5 (float32 LPIPS in batches vs one pair at a time). Sizes differ from 64 so both resize."""
    from anogen.cli import main

    mvtec = _write_folder(tmp_path / "mvtec" / "bottle" / "test" / "broken_large", _images(9, 7, 96))
    tree = tmp_path / "gen" / "bottle" / "broken_large"
    gen = _write_folder(tree / "image", _images(10, 8, 72), tree / "mask")  # the tree: only image/ is read
    out = tmp_path / "q.csv"
    args = _quality_args(weights, out, ("generated", tree, None), ("real", mvtec, None))
    config = ["quality.image_size=64", "quality.ic_lpips_centres=test_first_third", "quality.ic_lpips_cluster_cap=50"]
    assert main([*args, "--set", *config]) == 0
    row = _row(out)
    expected = _anomalydiffusion_ic_lpips(weights["lpips"], mvtec, gen, 64)
    assert row["n_centres"] == "3" and sum(map(int, row["clusters"].split())) == 10
    assert sum(int(c) >= 2 for c in row["clusters"].split()) >= 1  # at least one cluster is scored
    assert float(row["ic_lpips"]) == pytest.approx(expected, abs=1e-5)
    assert main([*args, "--support", str(mvtec), "--set", *config]) == 2
    assert "quality.ic_lpips_centres" in capsys.readouterr().err


def test_the_report_page_has_the_table_the_mean_row_and_the_peers():
    base = {c: "" for c in COLUMNS}
    rows = [
        {**base, "category": "a", "defect": "x", "is_mean": "1.5", "ic_lpips": "0.2", "kid_mean": "0.1", "note": "n1"},
        {**base, "category": "a", "defect": "y", "is_mean": "2.5", "ic_lpips": "0.4", "kid_mean": "", "note": "n1"},
        {**base, "category": "b", "defect": "x", "is_mean": "3.0", "ic_lpips": "0.6", "kid_mean": "0.3", "note": ""},
    ]
    table = dict(per_category(rows))
    assert table["a"][:3] == [2.0, pytest.approx(0.3), 0.1] and table["mean"][:3] == [2.5, 0.45, 0.2]
    page = quality_html(rows)
    for name, is_, ic, _ in PEERS:
        assert name in page and f"{is_:.3f}" in page and f"{ic:.3f}" in page
    assert "not strictly comparable" in page and "<b>n1</b>" in page and "2.500" in page
    assert (
        "not computed" in NOT_CONFIGURED and NOT_CONFIGURED[:40] in (REPO / "workflow/report/workflow.rst").read_text()
    )


# ----------------------------------------------------------------------------- the plan and the rule


def _plan(extra: dict | None = None):
    from anogen.config import deep_update, validate_config
    from anogen.data.demo import demo_layout
    from anogen.plan import Plan
    from tests import e2e

    cfg = validate_config(deep_update(e2e.e2e_config(), extra or {}))
    return Plan(cfg, layout=demo_layout(cfg["demo"]))


def test_no_quality_job_without_weights_and_keys_follow_the_weights_content(weights, tmp_path):
    assert _plan().instances("quality") == []
    configured = {"quality": {"inception_weights": str(weights["inception"]), "lpips_weights": str(weights["lpips"])}}
    plan = _plan(configured)
    assert plan.instances("quality") == plan.pairs()
    c, d = plan.pairs()[0]
    job = plan.job("quality", c, d)
    assert job.spec["inception_sha256"] and job.inputs["generation"] == plan.key("generation", c, d)
    assert len(job.spec["excluded"]) == plan.config["support"]["shots"]
    assert "batch_size" in job.runtime and "batch_size" not in job.spec
    moved = tmp_path / "moved.pth"
    moved.write_bytes(Path(weights["lpips"]).read_bytes())
    assert _plan(json.loads(json.dumps(configured).replace(str(weights["lpips"]), str(moved)))).key(
        "quality", c, d
    ) == (job.key)  # the path is runtime, the content is the key
    assert _plan({**configured, "quality": {**configured["quality"], "seed": 1}}).key("quality", c, d) != job.key
    # every metric setting is in the spec, so in the key (the test_first_third centres are test images of the
    # defect, already in the data fingerprint of the job's inputs)
    assert (job.spec["lpips_net"], job.spec["ic_lpips_centres"], job.spec["ic_lpips_cluster_cap"]) == (
        "vgg",
        "support",
        None,
    )
    for name, value in (("ic_lpips_centres", "test_first_third"), ("ic_lpips_cluster_cap", 50), ("lpips_net", "alex")):
        assert _plan({**configured, "quality": {**configured["quality"], name: value}}).key("quality", c, d) != job.key
    missing = {"quality": {"inception_weights": str(tmp_path / "none.pth"), "lpips_weights": str(moved)}}
    with pytest.raises(ConfigError, match="quality.inception_weights"):
        _plan(missing).key("quality", c, d)
    assert provenance.RANDOM_QUALITY_WEIGHTS in provenance.plan_warnings(plan.config)
    assert provenance.RANDOM_QUALITY_WEIGHTS not in provenance.plan_warnings(_plan().config)


@pytest.mark.e2e
def test_quality_rule_on_the_demo_run_and_its_report(demo_run, weights, tmp_path):
    """The demo run copied, one (category, defect) configured with random weights: only the quality jobs run."""
    import yaml

    from tests import e2e

    work = e2e.copy_tree(demo_run, tmp_path / "work")
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    plan = _plan()
    category, defect = plan.pairs()[0]
    config.update(categories=[category], defects={category: [defect]})
    config["quality"] = {"inception_weights": str(weights["inception"]), "lpips_weights": str(weights["lpips"])}
    config["quality"].update(kid_subsets=5, kid_subset_size=2, is_splits=2, image_size=64, batch_size=16)
    e2e.write_config(work, config)
    # the `quality` target plans only the quality jobs (an option before it ends --quiet's list of values)
    assert e2e.planned_jobs(work, "--cores", "2", "quality") == {
        "generation_quality": 1,
        "quality_table": 1,
        "quality": 1,
    }
    assert e2e.planned_jobs(work)["generation_quality"] == 1  # and the default target has them when configured
    e2e.run(work, "quality")
    with (work / "results" / "generation_quality.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert (row["category"], row["defect"]) == (category, defect)
    assert row["generation_key"] == plan.key("generation", category, defect)
    assert int(row["n_real"]) == e2e.e2e_config()["demo"]["n_test_per_defect"] - plan.config["support"]["shots"]
    assert row["is_mean"] and row["crop_is_mean"] and row["ic_lpips"]
    assert (row["kid_mean"] != "") == (int(row["n_real"]) >= 2)  # the unbiased KID needs two real images
    assert provenance.RANDOM_QUALITY_WEIGHTS in row["note"] and provenance.RANDOM_MODEL in row["note"]
    # the report of the `quality` target (the restricted plan's detectors are not the demo run's)
    e2e.run(work, "--report", "report.zip", "quality")
    import zipfile

    with zipfile.ZipFile(work / "report.zip") as zf:
        (item,) = [n for n in zf.namelist() if n.endswith("/generation_quality.html")]
        page = zf.read(item).decode()
    assert "AnomalyDiffusion" in page and provenance.RANDOM_QUALITY_WEIGHTS in page and "mean" in page


def test_estimate_counts_the_quality_jobs_only_when_configured(tmp_path):
    from anogen import estimate as est
    from anogen.config import deep_update, load_config_file
    from anogen.data.mvtec_counts import MVTEC_AD_COUNTS

    mvtec = load_config_file(REPO / "config" / "mvtec.yaml")
    assert "quality" not in est.estimate(mvtec, gpu_model="H200").stage_jobs()
    quality = {"quality": {"inception_weights": "/w/inception.pth", "lpips_weights": "/w/alexnet.pth"}}
    configured = deep_update(mvtec, quality)
    seeded = est.estimate(configured, gpu_model="H200")  # the H200 table has no quality entry
    assert seeded.stage_jobs()["quality"] == 73 and seeded.stage_hours()["quality"] == 0
    assert any("generation quality not measured" in n for n in seeded.notes)
    table = json.loads((est.RESULTS_DIR / "throughput_h200.json").read_text())
    table["stages"]["quality"] = {"inception_images_per_s": 100.0, "lpips_pairs_per_s": 1000.0, "overhead_s": 5.0}
    (tmp_path / "throughput_test.json").write_text(json.dumps({**table, "gpu_model": "Test GPU 9000"}))
    e = est.estimate(configured, results_dir=tmp_path, gpu_model="gpu 9000")
    # bottle/broken_large by hand: 209 normal x 2 boxes x 2 images, 20 real less 3 support
    n_gen = 209 * 2 * 2
    assert MVTEC_AD_COUNTS["bottle"][2]["broken_large"] == 20
    pairs = 2 * (n_gen * 3 + 3 * (n_gen / 3) * (n_gen / 3 - 1) / 2)
    expected = 2 * (n_gen + 17 + 3) / 100.0 + pairs / 1000.0 + 5.0
    (job,) = [j for j in e.jobs if j.name == "quality/bottle/broken_large"]
    assert job.seconds == pytest.approx(expected) and job.deps == ("generation/bottle/broken_large",)
    assert "quality" in est.format_report(e, 4)


def test_preflight_loads_the_quality_weights_or_says_why_there_is_no_table(weights, tmp_path):
    from anogen.commands.preflight import PreflightReport, _check_quality

    report = PreflightReport()
    _check_quality(_plan(), report)
    assert NOT_CONFIGURED in report.lines and report.ok and not report.warnings
    configured = {"inception_weights": str(weights["inception"]), "lpips_weights": str(weights["lpips"])}
    report = PreflightReport()
    _check_quality(_plan({"quality": configured}), report)
    assert report.ok and report.warnings == [provenance.RANDOM_QUALITY_WEIGHTS]
    assert sum("loads, sha256" in line for line in report.lines) == 2
    report = PreflightReport()
    _check_quality(_plan({"quality": {"inception_weights": str(weights["inception"])}}), report)
    assert report.ok and "only one of" in report.warnings[0]
    with pytest.raises(DataError, match="quality.lpips_weights"):
        _check_quality(
            _plan({"quality": {**configured, "lpips_weights": str(weights["inception"])}}), PreflightReport()
        )
