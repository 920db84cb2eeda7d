#!/usr/bin/env bash
# Builds ggml's Vulkan backend (libggml-vulkan.so) from llama-cpp-python 0.3.36's vendored
# llama.cpp with the engine's own flags and toolchain (Zig's for glibc 2.28, as
# scripts/build-llama-cpp.sh) plus -DGGML_VULKAN=ON, cached outside the repo keyed by version,
# flags, machine, toolchain and glslc. Prints the path of the library on stdout.
# Needs: cmake, a C++ compiler, glslc, libvulkan-dev, spirv-headers (Debian: glslc libvulkan-dev
# spirv-headers); Debian 12's Vulkan headers are too old, so Debian 13's headers are fetched once
# into the cache (header files only, no install) and the build still links the system loader.
set -euo pipefail
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON -DGGML_OPENMP=OFF -DGGML_VULKAN=ON"
PYTHON=${PYTHON:-python3}
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
GLSLC=$(command -v glslc || true)
[ -n "$GLSLC" ] || { echo "build-vulkan.sh: glslc not found (Debian: apt-get install glslc)" >&2; exit 1; }
ZIG=$(PYTHON="$PYTHON" "$(dirname "$0")/zig-toolchain.sh" "$(uname -m)-linux-gnu.2.28")
KEY=$(printf '%s %s %s %s %s' "$VERSION" "$FLAGS" "$(uname -m)" "$("$GLSLC" --version | head -n1)" \
  "$(basename "$ZIG")" | sha256sum | cut -c1-12)
HOME_DIR="$CACHE/backends/vulkan-$VERSION-$KEY"
LIB="$HOME_DIR/libggml-vulkan.so"
if [ -s "$LIB" ]; then
  echo "$LIB"
  exit 0
fi
mkdir -p "$CACHE/src" "$HOME_DIR"

# 1. The engine's source: llama-cpp-python's sdist, downloaded once.
SRC=$(PYTHON="$PYTHON" "$(dirname "$0")/engine-source.sh")

# 2. Vulkan headers new enough for ggml-vulkan.cpp (vk::LayerSettingEXT, 1.3.261+).
VK=/usr/include
have=$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\).*/\1/p' /usr/include/vulkan/vulkan_core.h 2>/dev/null || echo 0)
if [ "${have:-0}" -lt 261 ]; then
  HDR="$CACHE/src/vulkan-headers-trixie"
  if [ ! -f "$HDR/usr/include/vulkan/vulkan.hpp" ]; then
    echo "system Vulkan headers are 1.3.$have: fetching Debian 13's libvulkan-dev headers once ..." >&2
    apt_dir=$(mktemp -d "$CACHE/src/.apt.XXXXXX")
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/etc/preferences.d"
    echo "deb http://deb.debian.org/debian trixie main" >"$apt_dir/etc/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/etc/sources.list" -o "Dir::Etc::SourceParts=-"
      -o "Dir::Etc::Preferences=-" -o "Dir::Etc::PreferencesParts=$apt_dir/etc/preferences.d"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir" -o "Dir::State::status=/dev/null"
      -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
    apt-get "${apt_opts[@]}" -qq update >&2
    (cd "$apt_dir" && apt-get "${apt_opts[@]}" -qq download libvulkan-dev/trixie >&2)
    rm -rf "$HDR.tmp" && mkdir -p "$HDR.tmp"
    dpkg-deb -x "$apt_dir"/libvulkan-dev_*.deb "$HDR.tmp"
    rm -rf "$HDR" && mv "$HDR.tmp" "$HDR"
    rm -rf "$apt_dir"
  fi
  VK="$HDR/usr/include"
fi
# Only they and the SPIR-V headers, in a folder of their own: Zig's compiler must not see the
# system's glibc headers in /usr/include.
[ -d /usr/include/spirv ] || { echo "build-vulkan.sh: no SPIR-V headers (Debian: apt-get install spirv-headers)" >&2; exit 1; }
INCLUDE="$HOME_DIR/.include"
rm -rf "$INCLUDE" && mkdir -p "$INCLUDE"
for dir in vulkan vk_video; do
  [ ! -d "$VK/$dir" ] || ln -s "$VK/$dir" "$INCLUDE/$dir"
done
ln -s /usr/include/spirv "$INCLUDE/spirv"
LOADER=$(ls /usr/lib/*/libvulkan.so /usr/lib/libvulkan.so 2>/dev/null | head -n1 || true)
[ -n "$LOADER" ] || { echo "build-vulkan.sh: libvulkan.so not found (Debian: apt-get install libvulkan-dev)" >&2; exit 1; }

# 3. Only the ggml-vulkan target, from the same source and flags as the engine wheel.
BUILD=$(mktemp -d "$HOME_DIR/.build.XXXXXX")
echo "building libggml-vulkan.so for llama.cpp of llama-cpp-python $VERSION (several minutes, once) ..." >&2
# shellcheck disable=SC2086
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$ZIG/toolchain.cmake" \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF $FLAGS \
  -DVulkan_INCLUDE_DIR="$INCLUDE" -DVulkan_LIBRARY="$LOADER" -DVulkan_GLSLC_EXECUTABLE="$GLSLC" \
  >"$BUILD.configure.log" 2>&1 || { tail -n 40 "$BUILD.configure.log" >&2; echo "build-vulkan.sh: cmake configure failed; the full log is $BUILD.configure.log" >&2; rm -rf "$BUILD"; exit 1; }
"$PYTHON" "$(dirname "$0")/progress.py" libggml-vulkan "$BUILD.log" -- \
  cmake --build "$BUILD" --target ggml-vulkan -j "$(nproc)" || { rm -rf "$BUILD"; exit 1; }
built=$(find "$BUILD" -name libggml-vulkan.so -type f | head -n1)
[ -n "$built" ] || { echo "build-vulkan.sh: the build made no libggml-vulkan.so (log: $BUILD.log)" >&2; exit 1; }
cp "$built" "$LIB.tmp"  # linked stripped
mv "$LIB.tmp" "$LIB"
rm -rf "$BUILD" "$BUILD.log" "$BUILD.configure.log"
echo "$LIB"
