"""The data files are part of the content keys, at the granularity of what each job reads.

Unit tests check the keys of a Plan over a small MVTec-layout tree; the end-to-end test checks
the dry-run job list after a full run with the demo's budgets on a tree the test writes (the
demo's own data is made by a rule, so its key is the demo spec and cannot show this).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anogen.config import deep_update, validate_config
from anogen.plan import Plan
from tests import e2e
from tests.test_config_keys import all_keys  # every key of a plan, by artifact


def _touch_new(path: Path, value: int) -> None:
    """Rewrite an image with other content and a later modification time."""
    with Image.open(path) as img:
        array = np.asarray(img).copy()
    array[: max(1, array.shape[0] // 4), : max(1, array.shape[1] // 4)] = value
    Image.fromarray(array).save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _tree(tmp_path: Path) -> Path:
    from tests.fake_trees import build_fake_mvtec

    return build_fake_mvtec(tmp_path / "data", per_folder=5, categories=["bottle", "hazelnut"])


def _plan(root: Path) -> Plan:
    return Plan(validate_config({"data_root": str(root)}))


def _changed(root: Path, mutate) -> set[str]:
    before = all_keys(_plan(root))
    mutate()
    after = all_keys(_plan(root))
    return {k for k in before if before[k] != after[k]}


def _not_support(plan: Plan, category: str, defect: str) -> str:
    chosen = set(plan.support_files(category, defect))
    return next(n for n in plan.category_files(category).test_names(defect) if n not in chosen)


def test_mask_of_a_test_image_changes_only_that_categorys_evaluations(tmp_path):
    root = _tree(tmp_path)
    name = _not_support(_plan(root), "bottle", "broken_large")
    mask = root / "bottle" / "ground_truth" / "broken_large" / f"{Path(name).stem}_mask.png"
    changed = _changed(root, lambda: _touch_new(mask, 0))
    assert changed == {f"evaluation/bottle/{m}/{v}" for m in ("draem", "destseg") for v in ("baseline", "anogen")}


def test_mask_of_a_support_image_changes_that_defects_chain(tmp_path):
    root = _tree(tmp_path)
    (name, *_) = _plan(root).support_files("bottle", "contamination")
    mask = root / "bottle" / "ground_truth" / "contamination" / f"{Path(name).stem}_mask.png"
    changed = _changed(root, lambda: _touch_new(mask, 0))
    assert changed == {
        "support/bottle/contamination",
        "embedding/bottle/contamination",
        "generation/bottle/contamination",
        *(f"{stage}/bottle/{m}/anogen" for stage in ("detector", "evaluation") for m in ("draem", "destseg")),
    }


def test_replacing_a_training_image_changes_that_categorys_stage_2_and_3(tmp_path):
    root = _tree(tmp_path)
    changed = _changed(root, lambda: _touch_new(root / "hazelnut" / "train" / "good" / "001.png", 200))
    defects = _plan(root).defects("hazelnut")
    assert changed == {
        "foreground/hazelnut",
        *(f"generation/hazelnut/{d}" for d in defects),
        *(
            f"{stage}/hazelnut/{m}/{v}"
            for stage in ("detector", "evaluation")
            for m in ("draem", "destseg")
            for v in ("baseline", "anogen")
        ),
    }


def test_adding_a_normal_test_image_changes_only_the_evaluations(tmp_path):
    root = _tree(tmp_path)
    new = root / "bottle" / "test" / "good" / "999.png"
    changed = _changed(root, lambda: shutil.copy2(root / "bottle" / "test" / "good" / "000.png", new))
    assert changed == {f"evaluation/bottle/{m}/{v}" for m in ("draem", "destseg") for v in ("baseline", "anogen")}


def test_support_job_copies_exactly_the_files_the_plan_chose(tmp_path):
    from anogen.data.support import build_support_set, support_items

    root = _tree(tmp_path)
    plan = _plan(root)
    spec = plan.spec("support", "bottle", "broken_small")
    manifest = build_support_set(
        root,
        "bottle",
        "broken_small",
        shots=spec["shots"],
        seed=spec["seed"],
        out_dir=tmp_path / "s",
        key="0" * 12,
        files=spec["files"],
        origin="support.seed",
    )
    sources = [item["source_image"] for item in support_items(manifest)]
    assert sources == [f"bottle/test/broken_small/{n}" for n in spec["files"]]
    # the seeded choice made in the job (no plan) is the same
    manifest = build_support_set(
        root, "bottle", "broken_small", shots=spec["shots"], seed=spec["seed"], out_dir=tmp_path / "t", key="0" * 12
    )
    assert [item["source_image"] for item in support_items(manifest)] == sources


# ----------------------------------------------------------------------------- shared folder listings
# Every Plan of a process shares the folder listings (anogen.data.fingerprint._listing): a study
# plans dozens of arms over one data set. A listing is reused only while its folder is unchanged.


_OLD = time.time_ns() - 3600 * 10**9  # an hour back


def _count_scandir(monkeypatch) -> list:
    calls = []
    real = os.scandir

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    return calls


def _settled(monkeypatch, *folders: Path) -> None:
    """Date ``folders`` an hour back and count any change before now as settled (the guard's
    margin is for a clock tick; these tests change a folder only after it was listed)."""
    from anogen.data import fingerprint

    for folder in folders:
        os.utime(folder, ns=(_OLD, _OLD))
    time.sleep(0.02)  # past the tick of the folders' ctime (set now)
    monkeypatch.setattr(fingerprint, "_SETTLED_NS", 0)
    fingerprint.clear_listing_cache()


def test_a_folder_listing_is_reused_until_the_folder_changes(tmp_path, monkeypatch):
    from anogen.data.fingerprint import listed_files, listed_subdirs

    folder = tmp_path / "good"
    folder.mkdir()
    for name in ("000.png", "001.png"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    _settled(monkeypatch, folder)
    calls = _count_scandir(monkeypatch)
    assert [p.name for p in listed_files(folder)] == ["000.png", "001.png"]
    assert [p.name for p in listed_files(folder)] == ["000.png", "001.png"] and listed_subdirs(folder) == ["sub"]
    assert len(calls) == 1
    changes = [
        (lambda: (folder / "002.png").write_bytes(b"x"), ["000.png", "001.png", "002.png"]),
        (lambda: (folder / "000.png").unlink(), ["001.png", "002.png"]),
        (lambda: (folder / "001.png").rename(folder / "003.png"), ["002.png", "003.png"]),
    ]
    for i, (change, names) in enumerate(changes, start=1):
        change()
        # a new time of its own: two changes within one tick of the file system's clock are the
        # case the guard's margin (set to 0 here) is for
        os.utime(folder, ns=(folder.stat().st_atime_ns, _OLD + i))
        assert [p.name for p in listed_files(folder)] == names
    assert len(calls) == 4


def test_a_folder_changed_just_now_or_holding_a_symlink_is_listed_every_time(tmp_path, monkeypatch):
    from anogen.data import fingerprint

    fresh, linked = tmp_path / "fresh", tmp_path / "linked"
    fresh.mkdir()
    (fresh / "000.png").write_bytes(b"x")
    linked.mkdir()
    (linked / "000.png").symlink_to(fresh / "000.png")
    os.utime(linked, ns=(_OLD, _OLD))
    fingerprint.clear_listing_cache()
    calls = _count_scandir(monkeypatch)
    for _ in range(2):
        assert [p.name for p in fingerprint.listed_files(fresh)] == ["000.png"]
    assert len(calls) == 2  # the default margin: written less than a few seconds ago
    monkeypatch.setattr(fingerprint, "_SETTLED_NS", 0)
    for _ in range(2):
        assert [p.name for p in fingerprint.listed_files(linked)] == ["000.png"]
    assert len(calls) == 4  # a symlink's target may change without its folder
    (fresh / "000.png").unlink()
    assert fingerprint.listed_files(linked) == ()  # a dangling link is no file


def test_plans_sharing_listings_see_a_test_image_added_between_them(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    _settled(monkeypatch, *(p for p in root.rglob("*") if p.is_dir()))
    new = root / "bottle" / "test" / "good" / "999.png"
    calls = _count_scandir(monkeypatch)
    changed = _changed(root, lambda: shutil.copy2(root / "bottle" / "test" / "good" / "000.png", new))
    assert changed == {f"evaluation/bottle/{m}/{v}" for m in ("draem", "destseg") for v in ("baseline", "anogen")}
    listed = [c for c in calls if c.startswith(str(root))]
    # the second plan listed only the changed folder again (and what discovery lists itself)
    assert listed.count(str(new.parent)) == 2
    assert listed.count(str(root / "hazelnut" / "train" / "good")) == 1
    assert new.name in _plan(root).category_files("bottle").test_names("good")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.e2e
@pytest.mark.slow
def test_data_changes_rerun_exactly_their_readers(tmp_path):
    """After a full run on a written MVTec-layout tree, each data change plans exactly its readers."""
    from anogen.data.demo import generate_demo_dataset

    budgets = e2e.e2e_config()
    data = tmp_path / "data"
    generate_demo_dataset({**budgets["demo"], "root": str(data)})
    categories = ["brick_gray", "nut_object"]
    # Outside the demo nothing knows brick_gray is a texture: say so, as a user would.
    config = deep_update(
        budgets,
        {"data_root": str(data), "categories": categories, "category_options": {"brick_gray": {"texture": True}}},
    )
    work = e2e.make_workdir(tmp_path / "work", config=config)
    e2e.run(work)
    assert e2e.planned_jobs(work) == {}

    plan = Plan(validate_config(config))
    runs = len(config["detectors"]["models"]) * len(config["detectors"]["variants"])
    anogen_runs = len(config["detectors"]["models"])

    # 1. a mask of a test image in no support set: that category's evaluations and the summary
    name = _not_support(plan, "nut_object", plan.defects("nut_object")[0])
    mask = data / "nut_object" / "ground_truth" / plan.defects("nut_object")[0] / f"{Path(name).stem}_mask.png"
    saved = mask.read_bytes(), mask.stat()
    _touch_new(mask, 0)
    assert e2e.planned_jobs(work) == {"evaluate_detector": runs, "summarize": 1, "all": 1}
    mask.write_bytes(saved[0])
    os.utime(mask, ns=(saved[1].st_atime_ns, saved[1].st_mtime_ns))
    assert e2e.planned_jobs(work) == {}  # restored: the earlier artifacts are current again

    # 2. a support image's mask: that defect's chain, the category's anogen detectors and their evaluations
    defect = plan.defects("brick_gray")[0]
    (support_name, *_) = plan.support_files("brick_gray", defect)
    mask = data / "brick_gray" / "ground_truth" / defect / f"{Path(support_name).stem}_mask.png"
    _touch_new(mask, 0)
    assert e2e.planned_jobs(work) == {
        "select_support": 1,
        "learn_embedding": 1,
        "generate_anomalies": 1,
        "train_detector": anogen_runs,
        "evaluate_detector": anogen_runs,
        "summarize": 1,
        "all": 1,
    }

    # 3. one train/good image of nut_object replaced: its foreground, generations, detectors
    _touch_new(data / "nut_object" / "train" / "good" / "000.png", 128)
    jobs = e2e.planned_jobs(work)
    n_defects = len(plan.defects("nut_object"))
    assert jobs == {
        "select_support": 1,
        "learn_embedding": 1,
        "generate_anomalies": 1 + n_defects,
        "estimate_foreground": 1,
        "train_detector": anogen_runs + runs,
        "evaluate_detector": anogen_runs + runs,
        "summarize": 1,
        "all": 1,
    }, jobs
