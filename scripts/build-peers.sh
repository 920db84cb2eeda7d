#!/usr/bin/env bash
# Builds llama.cpp's own llama-bench and llama-server, the peers of the speed and server
# benchmark rows, from the llama.cpp source that llama-cpp-python 0.3.36 vendors, portable
# (every CPU variant as a loadable library), as scripts/build-llama-cpp.sh builds the engine:
# the same toolchain (Zig's, for glibc 2.28) and the same thread pool (GGML_OPENMP=OFF), so a
# ratio against them measures what llamapyz adds, not what a compiler or OpenMP changes.
#
# The result lies outside the repository, keyed by the flags:
#   ${LLAMAPYZ_DEV_CACHE:-~/.cache/llamapyz-dev}/peers/llama.cpp-0.3.36-<hash>/
#     bin/            llama-bench, llama-server, libllama, libggml*, every libggml-cpu-*.so
#     bin-<variant>/  the same with ONLY libggml-cpu-<variant>.so (hard links)
# With GGML_BACKEND_DL a binary loads every libggml-cpu-*.so beside itself (and in its working
# directory) and keeps the best-scoring one, which may be a variant this machine cannot run;
# so the benchmarks run bin-<variant>/ (from inside it) with the variant llamapyz chose.
# Prints the directory on stdout; does nothing when it already exists. Needs cmake and pip (for
# the sdist and Zig); 10-20 minutes on two cores, once. With
# LLAMAPYZ_PEERS_NO_BUILD=1 it only looks: exit code 3 when they are not built.
set -euo pipefail
VERSION=0.3.36
FLAGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON \
-DGGML_CPU_ALL_VARIANTS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON -DGGML_OPENMP=OFF"
TARGETS="llama-bench llama-server"
LAYOUT=2  # bump when the build changes beyond FLAGS (2: the tools' own libraries linked STATIC)
PYTHON=${PYTHON:-python3}
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
ZIG=$("$(dirname "$0")/zig-toolchain.sh" "$(uname -m)-linux-gnu.2.28" --where)  # fetched to build
KEY=$(printf '%s %s %s %s %s %s' "$VERSION" "$FLAGS" "$TARGETS" "$(uname -m)" "$(basename "$ZIG")" "$LAYOUT" |
  sha256sum | cut -c1-12)
DEST="$CACHE/peers/llama.cpp-$VERSION-$KEY"

if [ -d "$DEST" ]; then
  echo "$DEST"
  exit 0
fi
# For `python -m benchmarks --quick`: say whether they are built, never start a long build.
if [ -n "${LLAMAPYZ_PEERS_NO_BUILD:-}" ]; then
  exit 3
fi

ZIG=$(PYTHON="$PYTHON" "$(dirname "$0")/zig-toolchain.sh" "$(uname -m)-linux-gnu.2.28")
mkdir -p "$CACHE/peers"
tmp=$(mktemp -d "$CACHE/peers/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log="$tmp/build.log"
kept="$CACHE/peers/last-failed-build.log"
fail() {
  cp "$log" "$kept" 2>/dev/null || true
  tail -n 40 "$log" >&2
  echo "build-peers: $1 failed; the full log is $kept" >&2
  exit 1
}

started=$(date +%s)
echo "building llama.cpp's llama-bench and llama-server from llama-cpp-python $VERSION's" \
  "vendored source, portable (10-20 minutes, once) ..." >&2
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" \
  -d "$tmp/sdist" >"$log" 2>&1 || fail "downloading the llama-cpp-python $VERSION sdist"
tar -xzf "$tmp/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$tmp" \
  "llama_cpp_python-$VERSION/vendor/llama.cpp" >>"$log" 2>&1 || fail "unpacking the sdist"
src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
"$(dirname "$0")/static-tools.sh" "$src" >>"$log" 2>&1 || fail "linking the tools' libraries STATIC"

# shellcheck disable=SC2086  # FLAGS and TARGETS are word lists
cmake -S "$src" -B "$tmp/build" $FLAGS -DCMAKE_TOOLCHAIN_FILE="$ZIG/toolchain.cmake" >>"$log" 2>&1 ||
  fail "cmake configure"
# shellcheck disable=SC2086
"$PYTHON" "$(dirname "$0")/progress.py" "llama-bench, llama-server" "$tmp/compile.log" -- \
  cmake --build "$tmp/build" --config Release -j "$(nproc)" --target $TARGETS ||
  { cat "$tmp/compile.log" >>"$log"; cp "$log" "$kept"; echo "build-peers: the full log is $kept" >&2; exit 1; }
cat "$tmp/compile.log" >>"$log"

out="$tmp/out"
mkdir -p "$out/bin"
built="$tmp/build/bin"
for target in $TARGETS; do
  cp -p "$built/$target" "$out/bin/"
done
# Every shared library the binaries need, and the backend modules (under their real names).
cp -pL "$built"/lib*.so* "$out/bin/"
variants=$(cd "$out/bin" && { ls libggml-cpu-*.so 2>/dev/null || true; } | sed 's/^libggml-cpu-//; s/\.so$//')
if [ -z "$variants" ]; then
  echo "build-peers: no libggml-cpu-*.so in $built: not a GGML_BACKEND_DL build" >&2
  exit 1
fi
for variant in $variants; do
  dir="$out/bin-$variant"
  mkdir -p "$dir"
  for file in "$out/bin"/*; do
    name=$(basename "$file")
    case "$name" in
      libggml-cpu-*.so) [ "$name" = "libggml-cpu-$variant.so" ] || continue ;;
    esac
    # A hard link, not a symlink: ggml searches the directory of /proc/self/exe, which a
    # symlinked binary would resolve back to bin/ and its every variant.
    ln "$file" "$dir/$name" 2>/dev/null || cp -p "$file" "$dir/$name"
  done
done
cp "$log" "$out/build.log"
{
  echo "llama.cpp vendored by llama-cpp-python $VERSION"
  echo "flags: $FLAGS"
  echo "targets: $TARGETS"
  echo "compiler: $("$ZIG/c++" --version 2>/dev/null | head -n1) ($(basename "$ZIG"))"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m) in $(($(date +%s) - started)) s"
  echo "variants: $(echo $variants | tr '\n' ' ')"
} >"$out/BUILD-INFO"
mv "$out" "$DEST"
echo "built the peers in $(($(date +%s) - started)) s" >&2
echo "$DEST"
