#!/usr/bin/env bash
# Cross-builds llama.cpp's libraries for Linux arm64 from llama-cpp-python 0.3.36's vendored
# source with the engine's own flags (every arm CPU variant as a loadable library, RPC), with
# Debian's gcc-aarch64-linux-gnu and scripts/aarch64-linux-gnu.cmake; cached outside the repo
# keyed by version, flags and compiler version. Prints the folder on stdout, laid out as the
# engine wheel's site-packages: llama_cpp/lib/ (libllama, libggml, libggml-base, libmtmd, the
# arm64 libgomp) and bin/ (libggml-cpu-armv*.so, libggml-rpc.so).
# GCC 12 does not know -march=armv9.2-a: the two SME variants (armv9.2_1, armv9.2_2) are left
# out (they are dropped from a hard-linked copy of the source's variant list).
# Needs: cmake, ninja, g++-aarch64-linux-gnu (scripts/system-packages.sh arm64).
set -euo pipefail
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON"
DROPPED="armv9.2_1 armv9.2_2"
LAYOUT=2  # bump when the output's layout or link settings change
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
CXX=aarch64-linux-gnu-g++
command -v "$CXX" >/dev/null || { echo "build-arm64.sh: $CXX not found (Debian: apt-get install g++-aarch64-linux-gnu)" >&2; exit 1; }
KEY=$(printf '%s %s %s %s %s %s' "$VERSION" "$FLAGS" "$DROPPED" "$LAYOUT" "$("$CXX" --version | head -n1)" \
  "$(sha256sum "$HERE/aarch64-linux-gnu.cmake" | cut -c1-16)" | sha256sum | cut -c1-12)
OUT="$CACHE/backends/arm64-$VERSION-$KEY"
if [ -s "$OUT/llama_cpp/lib/libllama.so" ]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$CACHE/backends"

# 1. The engine's source, and a copy of it (hard links: no disk) without the SME variants.
SRC=$(PYTHON="$PYTHON" "$HERE/engine-source.sh")
TREE="$CACHE/src/llama.cpp-$VERSION-arm64"
if [ ! -f "$TREE/.ready" ]; then
  rm -rf "$TREE" && cp -al "$SRC/vendor/llama.cpp" "$TREE"
  list="$TREE/ggml/src/CMakeLists.txt"
  sed "/ggml_add_cpu_backend_variant(armv9\.2_[12] /d" "$list" >"$list.new"
  rm -f "$list" && mv "$list.new" "$list"  # a new file: the sdist's own copy stays as it is
  touch "$TREE/.ready"
fi

# 2. The libraries, for every arm variant but the dropped ones.
BUILD=$(mktemp -d "$CACHE/backends/.arm64-build.XXXXXX")
trap 'rm -rf "$BUILD" "$BUILD.log" "$BUILD.configure.log"' EXIT
echo "cross-building llama.cpp of llama-cpp-python $VERSION for arm64 (about 11 minutes on 2 cores, once) ..." >&2
# shellcheck disable=SC2086
cmake -S "$TREE" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$HERE/aarch64-linux-gnu.cmake" \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_CURL=OFF -DMTMD_VIDEO=OFF $FLAGS \
  >"$BUILD.configure.log" 2>&1 || { tail -n 40 "$BUILD.configure.log" >&2; echo "build-arm64.sh: cmake configure failed" >&2; exit 1; }
"$PYTHON" "$HERE/progress.py" "llama.cpp arm64" "$BUILD.log" -- \
  cmake --build "$BUILD" --target llama ggml-rpc mtmd -j "$(nproc)" || exit 1

# 3. Laid out as the wheel installs them, stripped, with the arm64 OpenMP runtime.
STAGE="$OUT.tmp"
rm -rf "$STAGE" && mkdir -p "$STAGE/llama_cpp/lib" "$STAGE/bin"
one() { find "$BUILD" -name "$1" \( -type f -o -type l \) | head -n1; }
for pair in libllama.so:libllama.so libggml.so.0:libggml.so.0 libggml-base.so.0:libggml-base.so.0 \
  libmtmd.so.0:libmtmd.so.0; do
  src=$(one "${pair%%:*}")
  [ -n "$src" ] || { echo "build-arm64.sh: the build made no ${pair%%:*} (log: $BUILD.log)" >&2; exit 1; }
  aarch64-linux-gnu-strip --strip-unneeded -o "$STAGE/llama_cpp/lib/${pair##*:}" "$(readlink -f "$src")"
done
for lib in $(find "$BUILD" -name 'libggml-cpu-*.so' -type f) "$(one libggml-rpc.so)"; do
  aarch64-linux-gnu-strip --strip-unneeded -o "$STAGE/bin/$(basename "$lib")" "$lib"
done
cp /usr/aarch64-linux-gnu/lib/libgomp.so.1 "$STAGE/llama_cpp/lib/libgomp.so.1"
for variant in armv8.0_1 armv8.2_1 armv8.6_1; do
  [ -s "$STAGE/bin/libggml-cpu-$variant.so" ] || { echo "build-arm64.sh: no libggml-cpu-$variant.so" >&2; exit 1; }
done
rm -rf "$OUT" && mv "$STAGE" "$OUT"
echo "$OUT"
