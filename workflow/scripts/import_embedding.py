# Thin wrapper: all logic is in anogen.jobs.import_embedding (tested without Snakemake).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821 - the checkout's anogen

from anogen.jobs import import_embedding  # noqa: E402

import_embedding(snakemake)  # noqa: F821 - provided by Snakemake's script directive
