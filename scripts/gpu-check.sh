#!/usr/bin/env bash
# One prepared GPU check, for a machine with an NVIDIA GPU (16 cores there: about 10 minutes):
# builds what is missing (the Vulkan backend, the CUDA backend for this GPU's architecture, and
# llama.cpp's llama-bench and llama-server, the peers), then runs `make bench`'s GPU rows on
# Vulkan and on CUDA: pp512 and tg128 against llama-bench, and the server rows against
# llama-server, both sides on the same backend library, the same device and the same layers.
# The table goes to stdout, the samples to bench-results/.
#   scripts/gpu-check.sh            # on the NVIDIA machine
#   scripts/gpu-check.sh --quick    # anywhere: lavapipe (GGML_VK_VISIBLE_DEVICES=0) counted as
#                                   # a GPU, Vulkan only, tiny counts, one repetition, the peers
#                                   # only if already built: checks that the script itself works
# Every build is cached outside the repo (scripts/build-*.sh); they need the llama-cpp-python
# sdist (and, for CUDA, PyPI's nvidia wheels) once: a machine without a network needs them in
# ${LLAMAPYZ_DEV_CACHE:-~/.cache/llamapyz-dev}/src first.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
PY=.venv/bin/python
GPU_DIR=${LLAMAPYZ_GPU_DIR:-.venv/llamapyz-gpu}
mkdir -p "$GPU_DIR"
if [ ! -s "$GPU_DIR/libggml-vulkan.so" ]; then
  lib=$(PYTHON=$PY scripts/build-vulkan.sh)
  cp "$lib" "$GPU_DIR/.libggml-vulkan.so.tmp" && mv "$GPU_DIR/.libggml-vulkan.so.tmp" "$GPU_DIR/libggml-vulkan.so"
fi
export LLAMAPYZ_CACHE=${LLAMAPYZ_CACHE:-$(mktemp -d)}
if [ "$QUICK" = 1 ]; then
  export GGML_VK_VISIBLE_DEVICES=0
  exec $PY -m benchmarks --quick --gpu-only --gpu-backends vulkan --gpu-lavapipe "$@"
fi
command -v nvidia-smi >/dev/null || { echo "gpu-check.sh: no nvidia-smi: run it on an NVIDIA machine, or --quick" >&2; exit 1; }
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d .)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
# The CUDA backend and the peers build side by side (each with every core; both compile).
pids=()
if [ ! -s "$GPU_DIR/cuda/libggml-cuda.so" ]; then
  (ln -sfn "$(PYTHON=$PY scripts/build-cuda.sh "$ARCH")" "$GPU_DIR/cuda") & pids+=($!)
fi
(PYTHON=$PY scripts/build-peers.sh >/dev/null) & pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done
exec $PY -m benchmarks --gpu-only --gpu-backends vulkan,cuda --reps "${GPU_CHECK_REPS:-3}"
