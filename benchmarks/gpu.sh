#!/usr/bin/env bash
# The benchmark on one GPU, in under 5 minutes:
#   1. the speed table (our MEGABYTE, Transformer and PerceiverAR in bf16 with torch.compile and
#      flash attention, against megabyte-pytorch and mblm as their users run them) at 8,192 bytes;
#   2. the paper's text model (global 2048 x 14, local 1024 x 18, P = 8, ~1B parameters) at 8,192
#      bytes with the largest batch that fits (batch 1, 2, 4, ... until out of memory), and its MFU
#      against a bf16 matrix-product peak measured in the same run.
#
#   benchmarks/gpu.sh                    # one GPU (CUDA_VISIBLE_DEVICES picks which)
#   benchmarks/gpu.sh --device cpu       # the same script on the CPU with tiny models (a check)
#   OUT=results/ benchmarks/gpu.sh       # where the tables and JSON go (default bench-gpu/)
#
# Needs: pip install -e '.[bench]' (megabyte-pytorch, mblm: optional, else "not installed" rows).
set -euo pipefail

DEVICE=cuda
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-bench-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python}
BENCH=("$PY" -m megabyte bench --device "$DEVICE" --dtype bf16)

if [[ "$DEVICE" == cpu ]]; then
  # A check that the script works, in seconds: tiny models, tiny lengths, small batches.
  TABLE=(--quick --rows megabyte,megabyte-pytorch --seq-lens 512 --steps 2 --warmup 1 --threads 2)
  PAPER=(--quick --seq-lens 512 --steps 1 --warmup 1 --threads 2 --max-batch 4)
else
  # torch.compile for MEGABYTE (the row this is about); the baselines run eager bf16 so that the
  # table stays within the time budget (each compiled row costs about a minute of compilation).
  TABLE=(--compile --rows megabyte,transformer/eager,perceiver-ar/eager,megabyte-pytorch,mblm
         --seq-lens 8192 --steps 10 --warmup 3 --gen-repeats 2)
  PAPER=(--sizes paper --seq-lens 8192 --steps 3 --warmup 1 --max-batch 64)
fi

start=$SECONDS
echo "== speed table ($DEVICE)" >&2
"${BENCH[@]}" "${TABLE[@]}" --json-out "$OUT/table.json" | tee "$OUT/table.md"
echo "== paper text model, largest batch ($DEVICE)" >&2
"${BENCH[@]}" "${PAPER[@]}" --rows megabyte --batch auto --json-out "$OUT/paper.json" | tee "$OUT/paper.md"
echo "== done in $((SECONDS - start)) s; tables and JSON in $OUT/" >&2
