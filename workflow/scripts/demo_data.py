# Thin wrapper: all logic is in anogen.jobs.demo_data (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import demo_data  # noqa: E402

demo_data(snakemake)  # noqa: F821 - provided by Snakemake's script directive
