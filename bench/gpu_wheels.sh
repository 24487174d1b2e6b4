#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh on a GPU machine without network: run here (where PyPI is reachable), carry .whl/.
#
#   bench/gpu_wheels.sh          pupick's dependencies (pyproject.toml) and the tests' pytest, without torch, for
#                                CPython 3.12 on manylinux x86_64, less what the GPU image already holds (below)
#   bench/gpu_wheels.sh --all    every one of them (about 150 MB: more than a 64 MiB carry allows)
#   DEST=DIR                     where the wheels go (default .whl, git-ignored)
#
# torch, its nvidia-* libraries and triton are never downloaded: the check uses the GPU machine's own CUDA torch.
# PRESENT lists the packages the workplace's GPU image holds (/work/.library/device/KINDS.md, 2026-11): they are not
# downloaded unless --all. gpu_check.sh installs only what is missing there, from these wheels alone (--no-index), and
# stops in one line naming anything that is neither installed nor here.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.whl}
PY=${PYTHON:-.venv/bin/python}
ALL=0
[ "${1:-}" = "--all" ] && ALL=1
PRESENT=${PRESENT:-"numpy scipy pandas matplotlib pillow fonttools kiwisolver contourpy cycler pyparsing python-dateutil
six packaging pyarrow pyyaml jinja2 markupsafe pygments psutil typing-extensions click tqdm tifffile prometheus-client
pytest pluggy iniconfig fsspec cloudpickle toolz msgpack sortedcontainers idna anyio h11 httpx httpcore certifi
urllib3 requests zipp filelock sympy mpmath networkx"}

mapfile -t REQS < <("$PY" bench/gpu_check.py --requirements)
REQS+=("setuptools>=68")  # the build backend of `pip install -e .` (pyproject's build-system), from these wheels
tmp=$(mktemp -d "${DEST%/}.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp" "${REQS[@]}"
norm() { echo "$1" | tr 'A-Z_.' 'a-z--'; }
for whl in "$tmp"/*.whl; do
    name=$(norm "$(basename "$whl" | cut -d- -f1)")
    case "$name" in torch|triton|nvidia-*) rm -f "$whl"; continue ;; esac
    if [ "$ALL" = 0 ]; then
        for p in $PRESENT; do
            if [ "$name" = "$(norm "$p")" ]; then rm -f "$whl"; break; fi
        done
    fi
done
rm -rf "$DEST"
mv "$tmp" "$DEST"
trap - EXIT
echo "$(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST: carry it to the GPU machine with the checkout"
