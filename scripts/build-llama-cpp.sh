#!/usr/bin/env bash
# Builds llama-cpp-python 0.3.36 portable (every CPU variant, RPC) into a wheelhouse keyed
# by the flags and the toolchain, so that pip's own cache can never hand back a native build.
# The toolchain is Zig's for glibc 2.28 (scripts/zig-toolchain.sh): the libraries then run on
# Debian 10+, Ubuntu 20.04+, RHEL 8+ with no libstdc++ and no OpenMP runtime (ggml's own
# thread pool). Prints the wheelhouse directory on stdout.
set -euo pipefail
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON -DGGML_OPENMP=OFF"
PYTHON=${PYTHON:-python3}
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
ZIG=$(PYTHON="$PYTHON" "$(dirname "$0")/zig-toolchain.sh" "$(uname -m)-linux-gnu.2.28")
KEY=$(printf '%s %s %s %s' "$VERSION" "$FLAGS" "$(uname -m)" "$(basename "$ZIG")" | sha256sum | cut -c1-12)
HOUSE="$CACHE/wheels/llama-cpp-python-$VERSION-$KEY"
mkdir -p "$HOUSE"
wheel=$(ls "$HOUSE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION portable (several minutes, once) ..." >&2
  tmp=$(mktemp -d "$HOUSE/.build.XXXXXX")
  # -v: pip passes cmake's progress lines through, which progress.py shows.
  CMAKE_ARGS="$FLAGS -DCMAKE_TOOLCHAIN_FILE=$ZIG/toolchain.cmake" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PYTHON" "$(dirname "$0")/progress.py" \
    "llama-cpp-python $VERSION" "$tmp/build.log" -- \
    "$PYTHON" -m pip wheel -v --no-deps --no-cache-dir -w "$tmp" "llama-cpp-python==$VERSION" || exit 1
  mv "$tmp"/llama_cpp_python-*.whl "$HOUSE"/
  rm -rf "$tmp"
  wheel=$(ls "$HOUSE"/llama_cpp_python-"$VERSION"-*.whl | head -n1)
fi
# A native build has no variant libraries: refuse it rather than ship one.
listing=$("$PYTHON" -m zipfile -l "$wheel")
for variant in x64 haswell skylakex; do
  if ! grep -q "libggml-cpu-$variant.so" <<<"$listing"; then
    echo "$wheel has no libggml-cpu-$variant.so: not a portable build" >&2
    exit 1
  fi
done
echo "$HOUSE"
