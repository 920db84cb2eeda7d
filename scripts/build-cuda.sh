#!/usr/bin/env bash
# Builds ggml's CUDA backend (libggml-cuda.so) from llama-cpp-python 0.3.36's vendored
# llama.cpp with the engine's own flags plus -DGGML_CUDA=ON, for the CUDA architectures given
# (one argument: "90", or "75;86;89;90"), and gathers beside it the CUDA libraries it links to,
# from PyPI's nvidia-cublas and nvidia-cuda-runtime wheels (CUDA 13). Cached outside the repo,
# keyed by version, flags, architectures and nvcc. Prints the folder on stdout; `pack build
# --gpu cuda` takes it from $LLAMAPYZ_GPU_DIR/cuda (default .venv/llamapyz-gpu/cuda):
#   ln -sfn "$(scripts/build-cuda.sh 90)" .venv/llamapyz-gpu/cuda
# Needs nvcc (CUDA 13) and cmake; no driver and no GPU. About 35-40 min per architecture on
# 2 cores, about 5 on 16.
set -euo pipefail
ARCHS=${1:?usage: scripts/build-cuda.sh ARCHS (CUDA architectures, e.g. 90 or "86;89;90")}
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON -DGGML_CUDA=ON -DGGML_CUDA_NO_VMM=ON"
PYTHON=${PYTHON:-python3}
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
NVCC=$(command -v nvcc || true)
[ -n "$NVCC" ] || { echo "build-cuda.sh: nvcc not found (install the CUDA 13 toolkit)" >&2; exit 1; }
NVCC_VERSION=$("$NVCC" --version | tail -n1)
case "$NVCC_VERSION" in
  *cuda_13.*) ;;
  *) echo "build-cuda.sh: needs CUDA 13's nvcc (found: $NVCC_VERSION)" >&2; exit 1 ;;
esac
# The wheels must match nvcc's release: newer runtime headers fail CCCL's version check.
RELEASE=$(sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p' <<<"$("$NVCC" --version)")
KEY=$(printf '%s %s %s %s %s' "$VERSION" "$FLAGS" "$ARCHS" "$(uname -m)" "$NVCC_VERSION" | sha256sum | cut -c1-12)
OUT="$CACHE/backends/cuda-$VERSION-$KEY"
LIBS="libggml-cuda.so libcudart.so.13 libcublas.so.13 libcublasLt.so.13"
done_already=1
for lib in $LIBS; do [ -s "$OUT/$lib" ] || done_already=0; done
if [ "$done_already" = 1 ]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$CACHE/src" "$OUT"

# 1. The engine's source (shared with build-vulkan.sh).
SRC=$(PYTHON="$PYTHON" "$(dirname "$0")/engine-source.sh")

# 2. cuBLAS and the CUDA runtime from PyPI (CUDA 13), unpacked once into the cache.
WHEELS="$CACHE/src/nvidia-cuda-$RELEASE"
if [ ! -f "$WHEELS/.done" ]; then
  echo "fetching nvidia-cublas and nvidia-cuda-runtime $RELEASE (about 420 MB, once) ..." >&2
  rm -rf "$WHEELS"
  "$PYTHON" -m pip install --quiet --no-deps --target "$WHEELS" \
    "nvidia-cublas==$RELEASE.*" "nvidia-cuda-runtime==$RELEASE.*" >&2
  touch "$WHEELS/.done"
fi
find_one() { find "$WHEELS" -name "$1" \( -type f -o -type l \) | head -n1; }
CUBLAS=$(find_one libcublas.so.13)
CUBLASLT=$(find_one libcublasLt.so.13)
CUDART=$(find_one libcudart.so.13)
HEADER=$(find_one cublas_v2.h)
for v in CUBLAS CUBLASLT CUDART HEADER; do
  [ -n "${!v}" ] || { echo "build-cuda.sh: the nvidia wheels in $WHEELS lack ${v,,}" >&2; exit 1; }
done
INCLUDE=$(dirname "$HEADER")

# 3. Only the ggml-cuda target. GGML_CUDA_NO_VMM: no driver API, so no libcuda stub to link.
BUILD=$(mktemp -d "$OUT/.build.XXXXXX")
echo "building libggml-cuda.so for CUDA architectures $ARCHS (35-40 minutes per architecture on 2 cores) ..." >&2
# shellcheck disable=SC2086
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF $FLAGS -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_SKIP_RPATH=ON \
  -DCUDA_cublas_LIBRARY="$CUBLAS" -DCUDA_cublasLt_LIBRARY="$CUBLASLT" \
  -DCMAKE_CUDA_FLAGS="-I$INCLUDE" -DCMAKE_CXX_FLAGS="-I$INCLUDE" \
  >"$BUILD.configure.log" 2>&1 || { tail -n 40 "$BUILD.configure.log" >&2; echo "build-cuda.sh: cmake configure failed; the full log is $BUILD.configure.log" >&2; rm -rf "$BUILD"; exit 1; }
"$PYTHON" "$(dirname "$0")/progress.py" libggml-cuda "$BUILD.log" -- \
  cmake --build "$BUILD" --target ggml-cuda -j "$(nproc)" || { rm -rf "$BUILD"; exit 1; }
built=$(find "$BUILD" -name libggml-cuda.so -type f | head -n1)
[ -n "$built" ] || { echo "build-cuda.sh: the build made no libggml-cuda.so (log: $BUILD.log)" >&2; exit 1; }
strip --strip-unneeded -o "$OUT/.libggml-cuda.so.tmp" "$built"
for lib in "$CUDART" "$CUBLAS" "$CUBLASLT"; do
  cp -L "$lib" "$OUT/.$(basename "$lib").tmp"
  mv "$OUT/.$(basename "$lib").tmp" "$OUT/$(basename "$lib")"
done
mv "$OUT/.libggml-cuda.so.tmp" "$OUT/libggml-cuda.so"  # last: its presence says the folder is whole
rm -rf "$BUILD" "$BUILD.log" "$BUILD.configure.log"
du -sh "$OUT" >&2
echo "$OUT"
