# Thin wrapper: all logic is in anogen.jobs.study_table (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import study_table  # noqa: E402

study_table(snakemake)  # noqa: F821 - provided by Snakemake's script directive
