#!/usr/bin/env bash
# Fetch the other MEGABYTE implementations (megabyte-pytorch, mblm) and the dependencies that a
# GPU machine without a network lacks, as wheels, for benchmarks/gpu.sh and device_check.sh.
# Run it on a machine WITH a network, in this checkout; it writes .wheels/ (ignored by git):
#
#   benchmarks/fetch_peer_wheels.sh                 # wheels for CPython 3.12 on x86-64 Linux
#   PYVER=3.11 benchmarks/fetch_peer_wheels.sh      # for another Python (this machine's, say)
#   WHEELS=/some/dir benchmarks/fetch_peer_wheels.sh
#
# Then the device tool carries it: run(carry=[".wheels"], command="benchmarks/device_check.sh").
# Each package without its dependencies (--no-deps): the list below is what the device image
# lacks (it has torch, einops, packaging, tqdm, numpy, pillow, pyyaml, filelock, transformers).
# One version of each, pinned: two versions of a package stop the whole offline install. Only
# pydantic-core is compiled (a wheel per Python version); the rest are pure Python.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${WHEELS:-$REPO/.wheels}
PYVER=${PYVER:-3.12}
PYTHON=${PYTHON:-python3}
PACKAGES=(
  megabyte-pytorch==0.3.6 mblm==0.4.2 mambapy==1.2.0   # the implementations (the bench extra's pins)
  beartype==0.19.0                                      # megabyte-pytorch
  pydantic==2.9.2 pydantic-core==2.23.4 annotated-types==0.7.0   # mblm's config
)

mkdir -p "$WHEELS"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WHEELS" "${PACKAGES[@]}"
du -sh "$WHEELS" >&2
echo "wheels in $WHEELS; benchmarks/gpu.sh and device_check.sh install them (no network needed there)" >&2
