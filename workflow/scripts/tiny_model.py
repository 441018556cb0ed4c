# Thin wrapper: all logic is in anogen.jobs.tiny_model (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import tiny_model  # noqa: E402

tiny_model(snakemake)  # noqa: F821 - provided by Snakemake's script directive
