#!/usr/bin/env bash
# The prepared device check (docs/device_check.md): correctness, training, speed, in that order,
# each stage's JSON and markdown written under $OUT as it goes; at most 8 minutes on one H200.
#
#   benchmarks/device_check.sh                       # one GPU; results in $OUT (default device-check/)
#   benchmarks/device_check.sh --device cpu          # the same stages, CI-sized (about a minute)
#   benchmarks/device_check.sh --stages correctness  # some stages only
#   OUT=results/ PYTHON=python3.12 benchmarks/device_check.sh
#
# Runs from the working tree (PYTHONPATH = the repository root, nothing installed) with $PYTHON
# (default python3); the other implementations come from .wheels/ when present (benchmarks/peers.sh).
# Everything printed also goes to $OUT/device_check.log. Exit status: 0 when every stage passed.
set -uo pipefail

case "${1:-}" in -h|--help) sed -n '2,12p' "$0"; exit 0 ;; esac
OUT=${OUT:-device-check}
mkdir -p "$OUT"
source "$(dirname "${BASH_SOURCE[0]}")/peers.sh" 2>"$OUT/device_check.log"
cat "$OUT/device_check.log"
"$PYTHON" -m megabyte.bench.device_check --out "$OUT" "$@" 2>&1 | tee -a "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
