"""``--configfile`` / ``--config`` of every ``anogen`` command mean what they mean to ``snakemake``
(anogen.options): the same words give the same config, checked against Snakemake's own parser and
merge, and against the real ``snakemake`` command on a Snakefile that records its config."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anogen import options
from anogen.cli import main as cli_main
from anogen.commands.keys import run_referenced_dirs
from anogen.errors import AnogenError, DataError
from anogen.options import OptionError, parse_config_items, run_config, snakemake_config, validated_run_config
from tests import e2e

# Every shape of value snakemake's --config reads differently from plain YAML
CONFIG_ITEMS = [
    "data_root=/data/mvtec ad",
    "steps=3",
    "lr=0.5",
    "big=1e3",
    "under=1_000",
    "flag=True",
    "word=true",
    "none=null",
    "empty=",
    "quoted='/a/b'",
    'json={"a": 1, "b": [1, 2]}',
    "section={'generation': {'batch_size': 4}}",
    "section={'generation': {'seed': 2}, 'other': 1}",
    "listed=[1, x]",
    "colons=a: b: c",
]


def snakemakes_config(configfiles: list[Path], items: list[str]) -> dict:
    """What Snakemake 9 itself builds from these options (its parser of --config, its ConfigSettings)."""
    from snakemake.cli import parse_config
    from snakemake.settings.types import ConfigSettings

    return ConfigSettings(config=parse_config(items), configfiles=configfiles).overwrite_config


def test_config_items_read_as_snakemake_reads_them():
    from snakemake.cli import parse_config

    ours = parse_config_items(CONFIG_ITEMS)
    assert ours == parse_config(CONFIG_ITEMS)
    # the values that differ from a YAML reading, stated independently
    assert ours["word"] == "true" and ours["flag"] is True and ours["none"] == "null" and ours["empty"] is None
    assert ours["big"] == 1000.0 and ours["under"] == 1000 and ours["quoted"] == "/a/b"
    assert ours["section"] == {"generation": {"batch_size": "4", "seed": "2"}, "other": "1"}  # merged, all text


@pytest.mark.parametrize(
    "item, named",
    [
        ("data_root", "is not KEY=VALUE"),
        ("quality.image_size=256", "top-level keys only"),
        ("x=1", "is not a top-level config key"),  # one-letter names: snakemake refuses them too
        ("1st=2", "is not a top-level config key"),
        ("note=#", "empty as YAML"),
    ],
)
def test_config_items_snakemake_refuses_are_refused_naming_them(item, named):
    from snakemake.cli import parse_config

    with pytest.raises((ValueError, AssertionError)):
        parse_config([item])
    with pytest.raises(OptionError, match=re.escape(f"--config {item!r}") + ".*" + re.escape(named)):
        parse_config_items([item])


@pytest.fixture
def two_files(tmp_path) -> tuple[Path, Path]:
    """A main config and a small file over it: mappings merge, a value replaces a mapping and back."""
    main = tmp_path / "main.yaml"
    main.write_text(
        "results_dir: results-a\n"
        "generation:\n  batch_size: 2\n  box_ranges: learned\n"
        "detectors:\n  models: [draem]\n  draem:\n    steps: 10\n    batch_size: 4\n"
    )
    over = tmp_path / "over.json"  # JSON, as snakemake reads either
    over.write_text(json.dumps({"generation": {"box_ranges": {}, "seed": 5}, "detectors": {"draem": {"steps": 20}}}))
    return main, over


def test_configfiles_merge_as_snakemake_merges_them(two_files):
    main, over = two_files
    items = ["data_root=/data", "results_dir=results-b", "detectors={'draem': {'lr': 0.1}}"]
    ours = snakemake_config([main, over], items)
    assert ours == snakemakes_config([main, over], items)
    assert ours["detectors"] == {"models": ["draem"], "draem": {"steps": 20, "batch_size": 4, "lr": "0.1"}}
    # snakemake's update: an empty mapping over a value leaves the value
    assert ours["generation"] == {"batch_size": 2, "box_ranges": "learned", "seed": 5}
    assert ours["results_dir"] == "results-b" and ours["data_root"] == "/data"


def test_the_real_snakemake_command_sees_the_same_config(tmp_path):
    """``snakemake --configfile A B --config k=v`` on a Snakefile shaped like ours (the demo's config
    only without --configfile) records its config and the validated one: both equal ours."""
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    for name in ("config.yaml", "mvtec.yaml"):
        (work / "config" / name).write_text((e2e.REPO / "config" / name).read_text())
    (work / "local.yaml").write_text("diffusion:\n  model: /models/ldm\ndetectors:\n  texture_source: /dtd/images\n")
    demo_root = yaml.safe_load((e2e.REPO / "config" / "config.yaml").read_text())["data_root"]
    (work / "Snakefile").write_text(
        f"import json, sys\nsys.path.insert(0, {str(e2e.REPO)!r})\n"
        "from anogen.options import validated_run_config\n"
        "if not workflow.overwrite_configfiles:\n    configfile: 'config/config.yaml'\n"
        "validated = validated_run_config(config, demo_default=not workflow.overwrite_configfiles)\n"
        "open('seen.json', 'w').write(json.dumps({'raw': config, 'validated': validated}))\n"
        "rule all:\n    input: []\n"
    )
    cases = [
        (
            ["config/mvtec.yaml", "local.yaml"],
            ["data_root=/data/mvtec", "authors_repo=/src/AnoGen", "categories=[bottle, cable]"],
        ),
        ([], [f"data_root={demo_root}", "results_dir=elsewhere"]),
    ]
    seen = []
    for files, items in cases:
        argv = (["--configfile", *files] if files else []) + ["--config", *items]
        cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", *argv]
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300, env=e2e.env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        seen.append(json.loads((work / "seen.json").read_text()))
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(work)
            assert json.loads(json.dumps(snakemake_config(files, items))) == seen[-1]["raw"], argv
            assert json.loads(json.dumps(run_config(files, items))) == seen[-1]["validated"], argv
    real, demo = (s["validated"] for s in seen)
    assert real["diffusion"]["model"] == "/models/ldm" and real["categories"] == ["bottle", "cable"]
    assert real["embedding"]["steps"] == 6000 and demo["results_dir"] == "elsewhere"
    assert demo["diffusion"]["model"].startswith("tiny:")


def test_the_snakefile_and_the_commands_read_the_same_default_config():
    snakefile = (e2e.REPO / "Snakefile").read_text()
    assert f'DEMO_CONFIG = "{options.DEMO_CONFIG}"' in snakefile
    assert "validated_run_config(" in (e2e.REPO / "workflow" / "rules" / "common.smk").read_text()


# ----------------------------------------------------------------------------- every command


def _quality_args(tmp_path: Path) -> list[str]:
    (tmp_path / "gen").mkdir(exist_ok=True)
    return ["--generated", str(tmp_path / "gen")]


COMMANDS = {
    "gc": lambda tmp: [],
    "keys": lambda tmp: [],
    "estimate": lambda tmp: [],
    "check-data": lambda tmp: [],
    "preflight": lambda tmp: [],
    "box-ranges": lambda tmp: [],
    "quality": _quality_args,
}


class Recorded(AnogenError):
    pass


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_reads_its_config_through_the_shared_function(command, two_files, tmp_path, monkeypatch):
    """The config each command validates is Snakemake's for the same words (recorded at the
    shared step, which then stops the command)."""
    main, over = two_files
    seen = []

    def record(raw, *, demo_default=False):
        seen.append(raw)
        raise Recorded("recorded")

    monkeypatch.setattr(options, "validated_run_config", record)
    items = ["data_root=/data/mvtec", "results_dir=results-c"]
    argv = [command, *COMMANDS[command](tmp_path), "--configfile", str(main), str(over), "--config", *items]
    assert cli_main(argv) == 2
    expected = snakemakes_config([main, over], items)
    assert seen == [expected]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_names_a_bad_option(command, two_files, tmp_path, capsys):
    main, _ = two_files
    extra = COMMANDS[command](tmp_path)
    missing = tmp_path / "local.yaml"
    cases = [
        (["--configfile", str(main), str(missing)], f"{missing}: config file (--configfile) does not exist"),
        (["--configfile", str(main), "--config", "data_root"], "--config 'data_root': is not KEY=VALUE"),
        (["--configfile", str(main), "--config", "quality.image_size=64"], "top-level keys only"),
    ]
    for args, message in cases:
        assert cli_main([command, *extra, *args]) == 2, args
        assert message in capsys.readouterr().err, args
    with pytest.raises(SystemExit) as stop:
        cli_main([command, *extra, "--configfile", str(main), "--configfile", str(missing)])
    assert stop.value.code == 2 and "--configfile given twice" in capsys.readouterr().err


def test_an_empty_config_file_is_refused_as_snakemake_refuses_it(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(DataError, match=re.escape(str(empty))):
        snakemake_config([empty], [])


def test_the_demo_config_does_not_run_on_other_data(tmp_path, capsys, monkeypatch):
    """Without --configfile the commands read config/config.yaml as the Snakefile does, and stop
    as the workflow does when data_root points elsewhere."""
    monkeypatch.chdir(e2e.REPO)
    assert cli_main(["keys", "--config", f"data_root={tmp_path}"]) == 2
    assert "was given without --configfile" in capsys.readouterr().err
    demo = run_config([], [])
    assert demo == validated_run_config(snakemake_config(["config/config.yaml"], []))


def test_quality_without_a_config_file_takes_nested_values_with_set(tmp_path, monkeypatch):
    """``anogen quality`` needs no config file (the schema's settings); ``--set`` sets nested values."""
    seen = []
    row = collections.defaultdict(str)  # every column empty
    monkeypatch.setattr("anogen.commands.quality.folder_quality", lambda **kw: seen.append(kw["quality"]) or row)
    monkeypatch.setattr("anogen.commands.quality.write_csv", lambda rows, out: None)
    argv = ["quality", "--generated", str(tmp_path), "--device", "cpu", "--set", "quality.image_size=64"]
    assert cli_main(argv) == 0
    defaults = validated_run_config({"data_root": "."})["quality"]
    assert seen == [{**defaults, "image_size": 64}] and defaults["image_size"] != 64


# ----------------------------------------------------------------------------- gc: several runs


def test_gc_keeps_every_run_given_with_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(e2e.REPO)
    results = tmp_path / "results"
    other = tmp_path / "other.yaml"
    other.write_text(f"extends: config/config.yaml\nresults_dir: {results}\nsupport:\n  seed: 7\n")
    items = [f"results_dir={results}"]
    first = run_referenced_dirs(run_config(["config/config.yaml"], items))
    second = run_referenced_dirs(run_config([other], items))
    assert second - first  # the second run has artifacts of its own
    stale = results / "support" / "widget" / "crack" / "0123456789ab"
    for folder in first | second | {stale}:
        folder.mkdir(parents=True, exist_ok=True)
    assert cli_main(["gc", "--configfile", "config/config.yaml", "--run", str(other), "--config", *items]) == 0
    listed = [line.split("\t")[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("stale")]
    assert listed == [str(stale)]
    # given alone, the demo's run lists the other run's directories as stale
    assert cli_main(["gc", "--configfile", "config/config.yaml", "--config", *items]) == 0
    listed = {line.split("\t")[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("stale")}
    assert listed == {str(d) for d in second - first} | {str(stale)}
