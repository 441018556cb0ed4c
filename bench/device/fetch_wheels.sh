#!/usr/bin/env bash
# Download the wheels the lent GPU machine lacks (wheels.txt) into .whl/ of this checkout,
# for that machine's Python (3.12, x86-64 manylinux). Run here, where PyPI is reachable; then
#   run(command="bash bench/device/run_check.sh", carry=[".whl"], timeout_s=590)
# PYVER=3.11 WHEELS=/tmp/whl311 fetches the same set for this machine (the CPU rehearsal).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${PYVER:-3.12}
DEST=${WHEELS:-.whl}
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$DEST"
# start from no wheel at all: a wheel left from an earlier pin beside the new one makes the
# install on the device fail (two versions of one package)
rm -f "$DEST"/*.whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
grep -v -E '^\s*(#|$)' bench/device/wheels.txt | while read -r req; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        "${platforms[@]}" -d "$DEST" "$req" 2>/dev/null && continue
    # no wheel on the index (connection-pool ships an sdist only): build one here, which is
    # portable only if it is pure Python
    tmp=$(mktemp -d)
    "$PY" -m pip wheel -q --no-deps -w "$tmp" "$req" >/dev/null || { echo "fetch_wheels: no wheel for $req" >&2; exit 1; }
    built=$(ls "$tmp"/*.whl)
    case "$built" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl) mv "$built" "$DEST"/ ;;
        *) echo "fetch_wheels: $req builds a platform wheel here ($built); it would not run there" >&2; exit 1 ;;
    esac
    rm -rf "$tmp"
done
n=$(ls "$DEST"/*.whl | wc -l)
mib=$(du -sm "$DEST" | cut -f1)
echo "fetch_wheels: $n wheels, $mib MiB in $DEST"
# the working tree and the carried paths travel within 64 MiB together
if [ "$mib" -gt 56 ]; then echo "fetch_wheels: $DEST is over 56 MiB; the device tool carries 64 MiB in all" >&2; exit 1; fi
