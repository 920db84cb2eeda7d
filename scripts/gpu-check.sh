#!/usr/bin/env bash
# One prepared GPU check, for a machine with an NVIDIA GPU (16 cores there: about 10 minutes):
# builds what is missing (the Vulkan backend, the CUDA backend for this GPU's architecture),
# builds SmolLM2 as a .pyz with --gpu cuda, then times generation and prompt processing on
# Vulkan and on CUDA with all layers offloaded, and prints a table.
#   scripts/gpu-check.sh            # on the NVIDIA machine
#   scripts/gpu-check.sh --quick    # anywhere: lavapipe (GGML_VK_VISIBLE_DEVICES=0), Vulkan
#                                   # only, tiny counts: checks that the script itself works
# Not yet: the llama-bench and llama-server peers of the same backend (the rows in
# `make bench`); this prints llamapyz's own figures only.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
PY=.venv/bin/python
GPU_DIR=${LLAMAPYZ_GPU_DIR:-.venv/llamapyz-gpu}
mkdir -p "$GPU_DIR"
[ -s "$GPU_DIR/libggml-vulkan.so" ] || cp "$(PYTHON=$PY scripts/build-vulkan.sh)" "$GPU_DIR/libggml-vulkan.so"
MODEL=$($PY scripts/fetch_smollm2.py)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
BACKENDS="vulkan"
if [ "$QUICK" = 1 ]; then
  export GGML_VK_VISIBLE_DEVICES=0
  PP=32 TG=8
  .venv/bin/pack build "$MODEL" -o "$OUT/m.pyz" >&2
else
  command -v nvidia-smi >/dev/null || { echo "gpu-check.sh: no nvidia-smi: run it on an NVIDIA machine, or --quick" >&2; exit 1; }
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d .)
  [ -s "$GPU_DIR/cuda/libggml-cuda.so" ] || ln -sfn "$(PYTHON=$PY scripts/build-cuda.sh "$ARCH")" "$GPU_DIR/cuda"
  PP=512 TG=128 BACKENDS="vulkan cuda"
  .venv/bin/pack build "$MODEL" --gpu cuda -o "$OUT/m.pyz" >&2
fi
chmod +x "$OUT/m.pyz"
export LLAMAPYZ_CACHE="$OUT/cache"
PROMPT=$(for _ in $(seq $((PP / 12 + 1))); do printf '%s ' "The old lighthouse keeper climbed the stairs and lit the lamp."; done)
now() { date +%s.%N; }
printf '%-8s %-40s %10s %10s\n' backend line "pp t/s" "tg t/s"
for backend in $BACKENDS; do
  "$OUT/m.pyz" --gpu "$backend" -ngl 99 -p "warm up" -n 1 >/dev/null 2>&1 || true  # self-test, shaders
  t0=$(now)
  "$OUT/m.pyz" --gpu "$backend" -ngl 99 -c 2048 -p "$PROMPT" -n 1 --temp 0 >/dev/null 2>"$OUT/pp.err"
  t1=$(now)
  "$OUT/m.pyz" --gpu "$backend" -ngl 99 -c 2048 -p "Chapter 1" -n "$TG" --temp 0 >/dev/null 2>"$OUT/tg.err"
  t2=$(now)
  "$OUT/m.pyz" --gpu "$backend" -ngl 99 -c 2048 -p "Chapter 1" -n 1 --temp 0 >/dev/null 2>/dev/null
  t3=$(now)
  line=$(grep -m1 -E "offloaded|no GPU|Error" "$OUT/tg.err" | cut -c1-40 || echo "?")
  # Each run includes the start (~1 s); the -n 1 run is subtracted from the tg run.
  awk -v b="$backend" -v l="$line" -v pp="$PP" -v tg="$TG" -v a="$t0" -v c="$t1" -v d="$t2" -v e="$t3" \
    'BEGIN { s = e - d; printf "%-8s %-40s %10.1f %10.1f\n", b, l, pp / (c - a - s > 0 ? c - a - s : 1e-9), (tg - 1) / ((d - c) - s > 0 ? (d - c) - s : 1e-9) }'
done
