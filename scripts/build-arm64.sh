#!/usr/bin/env bash
# Cross-builds llama.cpp's libraries for Linux arm64 from llama-cpp-python 0.3.36's vendored
# source with the engine's own flags (every arm CPU variant as a loadable library, RPC), with
# Zig's toolchain for glibc 2.28 (scripts/zig-toolchain.sh, as the x86-64 engine: no libstdc++,
# no OpenMP runtime); cached outside the repo keyed by version, flags and toolchain. Prints the
# folder on stdout, laid out as the engine wheel's site-packages: llama_cpp/lib/ (libllama,
# libggml, libggml-base, libmtmd) and bin/ (libggml-cpu-armv*.so, libggml-rpc.so), and
# peer/ (llama-bench, its tool libraries linked in; never packed: the benchmarks' peer under
# qemu, from the same build).
# The two SME variants (armv9.2_1, armv9.2_2) are left out (dropped from a hard-linked copy of
# the source's variant list): qemu-user here cannot show they run, and no test would.
# Needs: cmake, ninja.
set -euo pipefail
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON -DGGML_OPENMP=OFF"
DROPPED="armv9.2_1 armv9.2_2"
LAYOUT=5  # bump when the output's layout or link settings change (5: the tools' libraries STATIC)
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
ZIG=$(PYTHON="$PYTHON" "$HERE/zig-toolchain.sh" aarch64-linux-gnu.2.28)
KEY=$(printf '%s %s %s %s %s' "$VERSION" "$FLAGS" "$DROPPED" "$LAYOUT" "$(basename "$ZIG")" | sha256sum | cut -c1-12)
OUT="$CACHE/backends/arm64-$VERSION-$KEY"
if [ -s "$OUT/llama_cpp/lib/libllama.so" ]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$CACHE/backends"

# 1. The engine's source, and a copy of it (hard links: no disk) without the SME variants.
SRC=$(PYTHON="$PYTHON" "$HERE/engine-source.sh")
TREE="$CACHE/src/llama.cpp-$VERSION-arm64-$LAYOUT"
if [ ! -f "$TREE/.ready" ]; then
  rm -rf "$TREE" && cp -al "$SRC/vendor/llama.cpp" "$TREE"
  list="$TREE/ggml/src/CMakeLists.txt"
  sed "/ggml_add_cpu_backend_variant(armv9\.2_[12] /d" "$list" >"$list.new"
  rm -f "$list" && mv "$list.new" "$list"  # a new file: the sdist's own copy stays as it is
  "$HERE/static-tools.sh" "$TREE"  # llama-bench in one piece (see the script)
  touch "$TREE/.ready"
fi

# 2. The libraries, for every arm variant but the dropped ones.
BUILD=$(mktemp -d "$CACHE/backends/.arm64-build.XXXXXX")
trap 'rm -rf "$BUILD" "$BUILD.log" "$BUILD.configure.log"' EXIT
echo "cross-building llama.cpp of llama-cpp-python $VERSION for arm64 (about 11 minutes on 2 cores, once) ..." >&2
# shellcheck disable=SC2086
cmake -S "$TREE" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$ZIG/toolchain.cmake" \
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_CURL=OFF -DMTMD_VIDEO=OFF $FLAGS \
  >"$BUILD.configure.log" 2>&1 || { tail -n 40 "$BUILD.configure.log" >&2; echo "build-arm64.sh: cmake configure failed" >&2; exit 1; }
"$PYTHON" "$HERE/progress.py" "llama.cpp arm64" "$BUILD.log" -- \
  cmake --build "$BUILD" --target llama ggml-rpc mtmd llama-bench -j "$(nproc)" || exit 1

# 3. Laid out as the wheel installs them (linked stripped).
STAGE="$OUT.tmp"
rm -rf "$STAGE" && mkdir -p "$STAGE/llama_cpp/lib" "$STAGE/bin" "$STAGE/peer"
one() { find "$BUILD" -name "$1" \( -type f -o -type l \) | head -n1; }
for pair in libllama.so:libllama.so libggml.so.0:libggml.so.0 libggml-base.so.0:libggml-base.so.0 \
  libmtmd.so.0:libmtmd.so.0; do
  src=$(one "${pair%%:*}")
  [ -n "$src" ] || { echo "build-arm64.sh: the build made no ${pair%%:*} (log: $BUILD.log)" >&2; exit 1; }
  cp "$(readlink -f "$src")" "$STAGE/llama_cpp/lib/${pair##*:}"
done
for lib in $(find "$BUILD" -name 'libggml-cpu-*.so' -type f) "$(one libggml-rpc.so)"; do
  cp "$lib" "$STAGE/bin/$(basename "$lib")"
done
cp "$(readlink -f "$(one llama-bench)")" "$STAGE/peer/llama-bench"
for variant in armv8.0_1 armv8.2_1 armv8.6_1; do
  [ -s "$STAGE/bin/libggml-cpu-$variant.so" ] || { echo "build-arm64.sh: no libggml-cpu-$variant.so" >&2; exit 1; }
done
rm -rf "$OUT" && mv "$STAGE" "$OUT"
echo "$OUT"
