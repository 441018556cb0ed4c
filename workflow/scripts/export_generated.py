# Thin wrapper: all logic is in anogen.jobs.export_generated (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import export_generated  # noqa: E402

export_generated(snakemake)  # noqa: F821 - provided by Snakemake's script directive
