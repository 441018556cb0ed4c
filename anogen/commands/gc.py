"""``anogen gc``: the keyed directories under the results folder that none of the given runs refers to.

They are left behind by changed config values; ``--delete`` removes them, the default is a dry run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from anogen.artifacts import STAGES
from anogen.commands.keys import run_referenced_dirs
from anogen.options import run_config

STAGE_FOLDERS = sorted({stage.folder.split("/", 1)[0] for stage in STAGES.values()})


def keyed_dirs(results: Path) -> list[Path]:
    """Directories named by a 12-hex-digit key below each stage folder."""
    found = []
    for folder in STAGE_FOLDERS:
        base = results / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            name = path.name
            if path.is_dir() and len(name) == 12 and all(ch in "0123456789abcdef" for ch in name):
                found.append(path)
    return sorted(found)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(args) -> int:
    # The run of --configfile (the demo's config without it, unless --run names the runs) and each --run
    runs = ([args.configfile] if args.configfile else []) + args.run
    configs = [run_config(files, args.config or []) for files in runs or [[]]]
    results = {Path(config["results_dir"]) for config in configs}
    keep: set[Path] = set()
    for config in configs:
        keep |= {d.resolve() for d in run_referenced_dirs(config)}
    stale = [d for r in sorted(results) for d in keyed_dirs(r) if d.resolve() not in keep]
    total = 0
    for d in stale:
        size = _size(d)
        total += size
        print(f"{'deleting' if args.delete else 'stale'}\t{size / 1e6:9.1f} MB\t{d}")
        if args.delete:
            shutil.rmtree(d)
    verb = "deleted" if args.delete else "would delete (dry run; pass --delete)"
    print(f"{len(stale)} keyed directories, {total / 1e6:.1f} MB {verb}; {len(keep)} referenced kept")
    return 0
