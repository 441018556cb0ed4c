# Thin wrapper: all logic is in anogen.jobs.select_support (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import select_support  # noqa: E402

select_support(snakemake)  # noqa: F821 - provided by Snakemake's script directive
