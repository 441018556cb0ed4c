# Thin wrapper: all logic is in anogen.jobs.train_detector (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import train_detector  # noqa: E402

train_detector(snakemake)  # noqa: F821 - provided by Snakemake's script directive
