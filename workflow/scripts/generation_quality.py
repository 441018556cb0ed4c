# Thin wrapper: all logic is in anogen.jobs.generation_quality (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import generation_quality  # noqa: E402

generation_quality(snakemake)  # noqa: F821 - provided by Snakemake's script directive
