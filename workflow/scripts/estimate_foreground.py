# Thin wrapper: all logic is in anogen.jobs.estimate_foreground (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import estimate_foreground  # noqa: E402

estimate_foreground(snakemake)  # noqa: F821 - provided by Snakemake's script directive
