#!/usr/bin/env bash
# Create .venv and install anogen with everything the workflow and the tests need.
# torch is pinned to the build this project is tested with (on Linux x86-64 the PyPI wheel
# is a CUDA build, so the same environment runs on GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
# The packages carried to a lent GPU machine (bench/device/wheels.txt) are installed here at the
# versions carried there, so both machines run what the tests ran (a newer release on the
# registry otherwise changes the tested set under an unchanged checkout).
python -m pip install -q -e ".[test,slurm]" -c bench/device/wheels.txt
python -c "import anogen, torch, diffusers, snakemake; print('anogen', anogen.__version__, '| torch', torch.__version__, '| diffusers', diffusers.__version__)"
