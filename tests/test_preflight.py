"""``anogen preflight``: the demo config passes; a broken setup lists every problem; disk-full in a job is one line."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import yaml

from anogen import artifact_sizes, jobs
from anogen.cli import main
from anogen.commands import preflight
from tests.fake_trees import build_fake_mvtec, small_foreground_config
from tests.hub_fixtures import published_model
from tests.sd_scheduler_files import PUBLISHED

BY_NAME = {p.name: p for p in PUBLISHED}

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_config_passes(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["preflight"]) == 0
    out = capsys.readouterr().out
    assert "preflight: ready" in out
    assert "random diffusion model" in out  # the demo says what it is
    assert "GPU-hours" in out  # the run's estimate


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A real-run config whose every outside source is wrong in its own way."""
    root = tmp_path_factory.mktemp("preflight")
    model = published_model("ldm", root / "ldm")
    (model / "tokenizer" / "vocab.txt").unlink()
    (model / "unet" / "diffusion_pytorch_model.bin").unlink()
    data = build_fake_mvtec(root / "data", categories=["bottle"])
    config = {
        "data_root": str(data),
        "results_dir": str(root / "results"),
        "diffusion": {"model": str(model)},
        "detectors": {
            "texture_source": str(root / "no-dtd"),
            "destseg": {"teacher_weights": str(root / "no-resnet18.pth")},
        },
        "authors_repo": str(root / "not-a-clone"),
    }
    path = root / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, model


def test_a_broken_setup_lists_every_problem(broken, capsys):
    path, model = broken
    assert main(["preflight", "--configfile", str(path)]) == 1
    out = capsys.readouterr().out
    summary = out[out.index("preflight: ") :]
    for expected in (
        str(model / "tokenizer" / "vocab.txt"),
        str(model / "unet"),
        "no-resnet18.pth does not exist",
        "no-dtd",
        "not-a-clone",
    ):
        assert expected in summary, (expected, summary)
    # what could be read is still reported: the classes and the schedule that will be used
    assert "transformers.BertTokenizer" in out
    assert "noise schedule (trained" in out and "beta_schedule scaled_linear" in out


def test_too_little_free_space_is_a_problem(broken, tmp_path, monkeypatch, capsys):
    path, _ = broken
    config = yaml.safe_load(path.read_text())
    config["diffusion"]["model"] = str(published_model("ldm", tmp_path / "ldm"))
    config["detectors"] = {"models": ["draem"]}
    del config["authors_repo"]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config))
    assert main(["preflight", "--configfile", str(good)]) == 0, capsys.readouterr().out
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda _: types.SimpleNamespace(free=10**6))
    assert main(["preflight", "--configfile", str(good)]) == 1
    out = capsys.readouterr().out
    assert "1.0 MB free" in out and "detector checkpoints dominate" in out


def test_the_noise_schedule_and_the_keys_the_file_differs_in(broken, tmp_path, capsys):
    """Stable Diffusion with CompVis/stable-diffusion-v1-4's 230-byte scheduler file of 2022."""
    path, _ = broken
    config = yaml.safe_load(path.read_text())
    model = published_model("sd", tmp_path / "sd")
    (model / "scheduler" / "scheduler_config.json").write_text(BY_NAME["V1_4_MAIN_2022_10_07"].text)
    config["detectors"] = {"models": ["draem"]}
    del config["authors_repo"]
    printed = {}
    for mode in ("trained", "file"):
        config["diffusion"] = {"model": str(model), "scheduler": mode}
        good = tmp_path / f"{mode}.yaml"
        good.write_text(yaml.safe_dump(config))
        assert main(["preflight", "--configfile", str(good)]) == 0
        printed[mode] = capsys.readouterr().out
    assert (
        "noise schedule (trained: the CompVis Stable Diffusion training code's values): num_train_timesteps 1000, "
        "beta_schedule scaled_linear, beta_start 0.00085, beta_end 0.012, steps_offset 1, set_alpha_to_one False, "
        "clip_sample False, prediction_type epsilon, timestep_spacing leading\n"
        "scheduler_config.json differs from the values used: set_alpha_to_one (file: omitted, diffusers' default "
        "True), clip_sample (file: omitted, diffusers' default True)\n"
    ) in printed["trained"]
    assert (
        "noise schedule (file: scheduler_config.json as published): num_train_timesteps 1000, beta_schedule "
        "scaled_linear, beta_start 0.00085, beta_end 0.012, steps_offset 1, set_alpha_to_one True, clip_sample True, "
        "prediction_type epsilon, timestep_spacing leading\n"
        "scheduler_config.json omits trained_betas, set_alpha_to_one, clip_sample, prediction_type, "
        "timestep_spacing: diffusers' defaults are used\n"
    ) in printed["file"]


def test_boxes_that_cannot_be_placed_are_a_problem(tmp_path, capsys):
    """A 0.9 x 0.9 box on a foreground of 1/16 of the image (tests/test_box_placement.py): preflight
    names the defect, the best overlap and the setting; with 0.2 x 0.2 boxes it passes."""
    path = tmp_path / "boxes.yaml"

    def preflight_with(side: float) -> tuple[int, str]:
        box = {"width": [side, side], "height": [side, side], "rotate": False}
        raw = {**small_foreground_config(tmp_path, box, max_tries=100), "diffusion": {"model": "tiny:ldm"}}
        path.write_text(yaml.safe_dump({**raw, "detectors": {"models": ["draem"]}}))
        status = main(["preflight", "--configfile", str(path), "--foreground-images", "1"])
        return status, capsys.readouterr().out.split("\npreflight: ")[-1]

    status, summary = preflight_with(0.9)
    assert status == 1 and summary.startswith("1 problem(s)"), summary
    assert "bottle/broken_large: its boxes" in summary and "generation.box_ranges.bottle.broken_large" in summary
    assert "puts 7.7% of a box on it, at least 50% needed" in summary
    status, summary = preflight_with(0.2)
    assert status == 0 and summary.startswith("ready"), summary


def test_detector_sizes_count_the_network_and_its_optimiser():
    """DRAEM at the paper's widths: 97.4M parameters (the official network), Adam's two moments."""
    spec = {"detector": "draem", "draem": {"recon_base_width": 128, "disc_base_width": 64}}
    params = artifact_sizes.detector_parameters(spec)
    assert 95e6 < params < 100e6
    kept, peak = artifact_sizes.detector_bytes(spec)
    assert kept == 4 * params and peak == kept + 2 * 3 * kept


def _fake_sm(tmp_path: Path, spec: dict) -> types.SimpleNamespace:
    out = tmp_path / "results" / "detectors" / "c" / "draem" / "baseline" / "abc"
    out.mkdir(parents=True)
    (out / "partial.bin").write_bytes(b"x" * 1000)
    params = types.SimpleNamespace(spec=json.dumps(spec), keys=lambda: ["spec"])
    return types.SimpleNamespace(
        log=[str(tmp_path / "job.log")],
        wildcards=types.SimpleNamespace(items=lambda: []),
        params=params,
        input=[],
        output=[str(out / "manifest.json")],
        threads=1,
        rule="train_detector",
    )


def test_a_full_disk_is_one_line_naming_the_folder_the_free_space_and_the_need(tmp_path, capfd):
    spec = {"detector": "draem", "draem": {"recon_base_width": 128, "disc_base_width": 64}}
    sm = _fake_sm(tmp_path, spec)

    @jobs.job
    def writes_a_checkpoint(sm, params):
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:  # as safetensors re-raises it
            raise RuntimeError("Error while serializing: IoError(StorageFull)") from exc

    with pytest.raises(SystemExit) as stop:
        writes_a_checkpoint(sm)
    assert stop.value.code == 1
    # (under pytest the log handler writes to the captured stderr too; in a job it goes to the log file)
    err = capfd.readouterr().err
    console = [line for line in err.splitlines() if line.startswith("anogen")]
    assert len(console) == 1 and "failed unexpectedly" not in err, console
    line = console[0]
    assert "no space left on device writing" in line and str(Path(sm.output[0]).parent) in line
    assert "free there" in line and f"{artifact_sizes.human(1000)} written" in line
    assert artifact_sizes.human(artifact_sizes.detector_bytes(spec)[1]) in line
    assert "Traceback" in err  # the details stay in the log (the captured stderr under pytest)


def test_other_failures_still_raise(tmp_path):
    sm = _fake_sm(tmp_path, {"detector": "draem"})

    @jobs.job
    def fails(sm, params):
        raise ValueError("not a disk problem")

    with pytest.raises(ValueError, match="not a disk problem"):
        fails(sm)
