#!/usr/bin/env bash
# The one command for a lent GPU machine (the device tool's `run`), from the checkout's root:
#   bash bench/device/fetch_wheels.sh                       # here, once: fills .whl/
#   run(command="bash bench/device/run_check.sh", carry=[".whl"], timeout_s=590)
# It installs the carried wheels beside the image's packages, runs bench/gpu_check.py inside a
# time budget and leaves under $OUT what comes back: throughput_<gpu>.json (written after every
# phase, so a lease that ends early still returns what was measured), gpu_check.log and the
# workflow's logs. Extra arguments go to gpu_check.py (the test suite runs `--cpu --tiny`).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/.device-out}
# the checkout's environment where there is one (tools/setup.sh), else the machine's python3
# (the lent GPU machine's image holds torch there; .venv/ does not travel)
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
SITE=${ANOGEN_DEVICE_SITE:-/tmp/anogen-site}
WORK=${ANOGEN_CHECK_WORKDIR:-/tmp/anogen-gpu-check}
# 590 s of command time: the DAG and benchmarks take 540 of it, the rest is install and copying
BUDGET=${ANOGEN_CHECK_BUDGET_S:-540}
WHEELS=${ANOGEN_WHEELS:-.whl}
mkdir -p "$OUT"

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl ||
        { echo "run_check: installing the carried wheels ($WHEELS/) failed" >&2; exit 3; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv

"$PY" bench/gpu_check.py --budget-s "$BUDGET" --workdir "$WORK" --out "$OUT/" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}

# the workflow's own logs (and snakemake's) for whatever failed: one archive, so it comes back
if [ -d "$WORK" ]; then
    (cd "$WORK" && find . -path ./models -prune -o \( -name '*.log' -o -path '*/.snakemake/log/*' \) -type f -print |
        tar czf "$OUT/logs.tgz" -T - 2>/dev/null)
fi
echo "run_check: gpu_check.py exited $rc; under \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
