#!/usr/bin/env bash
# Entropy patches against fixed patches at matched training FLOPs: the measurement behind the
# README's "Entropy patches" tables. Trains one small entropy model per modality (its cost is
# outside the budget, like the subword model's BPE vocabulary), then `megabyte compare` runs the
# entropy-patched MEGABYTE beside the other kinds on the same data, seed and budget.
#
#   benchmarks/entropy_patching.sh TEXT_DATA IMAGE_DATA AUDIO_DATA OUT
#       TEXT_DATA  e.g. `megabyte prepare text ../shared/data/text --out data/text`
#       IMAGE_DATA e.g. `megabyte prepare image ../shared/data/image/photos-skimage --size 32 --crops 64 --out data/photos`
#       AUDIO_DATA e.g. `megabyte prepare audio ../shared/data/audio --out data/audio`
#
# Environment: STEPS (entropy-model steps, default 500 on text (batch 8), 200 on images and 150 on audio
# (batch 4)),
# KINDS_TEXT (default megabyte,megabyte-space,megabyte-entropy,transformer,subword),
# KINDS_OTHER (default megabyte,megabyte-entropy,transformer), THREADS (default 2).
# Hours of CPU time at the defaults; every stage writes its own folder under OUT and is skipped
# when that folder already holds its result, so a stopped run continues where it was.
set -euo pipefail
if [ $# -ne 4 ]; then sed -n '2,17p' "$0" >&2; exit 2; fi
text=$1 images=$2 audio=$3 out=$4
threads=${THREADS:-2}
kinds_text=${KINDS_TEXT:-megabyte,megabyte-space,megabyte-entropy,transformer,subword}
kinds_other=${KINDS_OTHER:-megabyte,megabyte-entropy,transformer}
mkdir -p "$out"

entropy_model() {  # NAME DATA STEPS [overrides...]
  local name=$1 data=$2 steps=$3; shift 3
  [ -f "$out/$name/latest" ] || megabyte train --data "$data" --out "$out/$name" --preset entropy --no-progress \
      train.max_steps="$steps" "$@"
}
compare() {  # NAME ARGS...
  local name=$1; shift
  [ -f "$out/$name/compare.json" ] || megabyte compare "$@" --threads "$threads" --no-progress --out "$out/$name"
}

entropy_model entropy-text "$text" "${STEPS:-500}"
entropy_model entropy-images "$images" "${STEPS:-200}" model.max_seq_len=3072 train.batch_size=4  # one 32 x 32 RGB image
entropy_model entropy-audio "$audio" "${STEPS:-150}" model.max_seq_len=4096 train.batch_size=4   # audio-small's context

compare text-5e12 --data "$text" --models "$kinds_text" --entropy-model "$out/entropy-text" \
    --flops 5e12 --eval-bytes 131072 --batch-size 2
compare images-1e13 --data "$images" --preset image-small --models "$kinds_other" \
    --entropy-model "$out/entropy-images" --flops 1e13 --eval-bytes 98304 --batch-size 2
compare audio-1e13 --data "$audio" --preset audio-small --models "$kinds_other" \
    --entropy-model "$out/entropy-audio" --flops 1e13 --eval-bytes 131072 --batch-size 2
compare text-2e13 --data "$text" --models "$kinds_text" --entropy-model "$out/entropy-text" \
    --flops 2e13 --eval-bytes 131072 --batch-size 2
