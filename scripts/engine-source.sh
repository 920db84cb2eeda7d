#!/usr/bin/env bash
# The llama.cpp source that llama-cpp-python 0.3.36 vendors: its sdist, downloaded once into
# ${LLAMAPYZ_DEV_CACHE:-~/.cache/llamapyz-dev}/src. Prints the unpacked folder on stdout.
# The GPU backend builds (build-vulkan.sh, build-cuda.sh) compile from it.
set -euo pipefail
VERSION=0.3.36
PYTHON=${PYTHON:-python3}
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
SRC="$CACHE/src/llama_cpp_python-$VERSION"
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
  mkdir -p "$CACHE/src"
  tmp=$(mktemp -d "$CACHE/src/.dl.XXXXXX")
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$VERSION" >&2
  tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp"
  rm -rf "$SRC"
  mv "$tmp/llama_cpp_python-$VERSION" "$SRC"
  rm -rf "$tmp"
fi
echo "$SRC"
