#!/usr/bin/env bash
# The benchmark on one GPU, in about 5 minutes: the speed stage of the device check
# (megabyte/bench/speed_check.py, docs/device_check.md):
#   1. the bf16 matrix-product peak;
#   2. the paper's text model (global 2048 x 14, local 1024 x 18, P = 8, ~1B parameters) at 8,192
#      bytes, eager, at the largest batch that fits, with MFU against that peak and peak memory;
#   3. our ~25M MEGABYTE (bf16, torch.compile) against megabyte-pytorch and mblm, each of those as
#      its users run it (fp32) and in bf16, 32 x 8,192 bytes a step (the table says which is which);
#   4. the paper's text model compiled at the batch found in 2.
#
#   benchmarks/gpu.sh                    # one GPU (CUDA_VISIBLE_DEVICES picks which)
#   benchmarks/gpu.sh --device cpu       # the same script on the CPU with tiny models (a check)
#   OUT=results/ benchmarks/gpu.sh       # where 3-speed.md and 3-speed.json go (default bench-gpu/)
#
# Needs nothing installed: runs from the working tree with $PYTHON (default python3); the other
# implementations come from .wheels/ (benchmarks/fetch_peer_wheels.sh), else "not installed" rows.
set -euo pipefail

case "${1:-}" in -h|--help) sed -n '2,16p' "$0"; exit 0 ;; esac
export OUT=${OUT:-bench-gpu}
exec bash "$(dirname "${BASH_SOURCE[0]}")/device_check.sh" --stages speed "$@"
