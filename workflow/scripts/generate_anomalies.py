# Thin wrapper: all logic is in anogen.jobs.generate_anomalies (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import generate_anomalies  # noqa: E402

generate_anomalies(snakemake)  # noqa: F821 - provided by Snakemake's script directive
