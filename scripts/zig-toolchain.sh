#!/usr/bin/env bash
# A C/C++ toolchain for an old glibc: Zig's (the `ziglang` package from the package index,
# installed once into the dev cache) with its own static libc++, so that what it builds needs
# only the glibc symbols of TARGET's version and no libstdc++ at all.
#   scripts/zig-toolchain.sh x86_64-linux-gnu.2.28     (or aarch64-linux-gnu.2.28)
#   scripts/zig-toolchain.sh x86_64-linux-gnu.2.28 --where   (the folder's name only)
# Prints a folder holding cc, c++, ar, ranlib and toolchain.cmake (CMAKE_TOOLCHAIN_FILE).
# Zig reads -march as a CPU name; on arm64 the wrappers turn GCC's `-march=armv8.2-a+dotprod+fp16`
# (what ggml's CMake writes for its CPU variants) into Zig's `-mcpu=generic+v8_2a+dotprod+fullfp16`.
set -euo pipefail
ZIG_VERSION=0.17.1
TARGET=${1:?usage: zig-toolchain.sh TARGET (x86_64-linux-gnu.2.28, aarch64-linux-gnu.2.28)}
PYTHON=${PYTHON:-python3}
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
TOOLS="$CACHE/tools/ziglang-$ZIG_VERSION"
ZIG="$TOOLS/ziglang/zig"
REV=2  # bump when toolchain.cmake's settings change: every native build is keyed by OUT's name
OUT="$CACHE/tools/zig-$ZIG_VERSION-$TARGET-r$REV"
if [ "${2:-}" = "--where" ]; then  # the folder only (a cache key), nothing fetched or written
  echo "$OUT"
  exit 0
fi
if [ ! -x "$ZIG" ]; then
  echo "fetching Zig $ZIG_VERSION from the package index (once) ..." >&2
  rm -rf "$TOOLS.tmp"
  "$PYTHON" -m pip install --quiet --no-deps --target "$TOOLS.tmp" "ziglang==$ZIG_VERSION" >&2
  rm -rf "$TOOLS" && mv "$TOOLS.tmp" "$TOOLS"
fi
mkdir -p "$(dirname "$OUT")"
NEW=$(mktemp -d "$OUT.XXXXXX")
for tool in cc c++; do
  cat >"$NEW/$tool" <<EOF
#!/usr/bin/env bash
# Zig $ZIG_VERSION's $tool for $TARGET (written by scripts/zig-toolchain.sh).
export ZIG_GLOBAL_CACHE_DIR="$CACHE/tools/zig-cache" ZIG_LOCAL_CACHE_DIR="$CACHE/tools/zig-cache"
args=()
for a in "\$@"; do
  case "\$a" in
    -march=armv*)
      base=\${a#-march=armv}; tags=\${base#*-a}; base=\${base%%-a*}
      case "\$base" in 8) cpu=generic ;; *) cpu="generic+v\${base/./_}a" ;; esac
      tags=\${tags//+fp16/+fullfp16}; tags=\${tags//+nosve/-sve}
      args+=("-mcpu=\$cpu\$tags") ;;
    *) args+=("\$a") ;;
  esac
done
exec "$ZIG" $tool -target $TARGET "\${args[@]}"
EOF
done
printf '#!/bin/sh\nexec "%s" ar "$@"\n' "$ZIG" >"$NEW/ar"
printf '#!/bin/sh\nexec "%s" ranlib "$@"\n' "$ZIG" >"$NEW/ranlib"
chmod +x "$NEW"/cc "$NEW"/c++ "$NEW"/ar "$NEW"/ranlib
arch=${TARGET%%-*}
{
  echo "# Zig $ZIG_VERSION for $TARGET (written by scripts/zig-toolchain.sh)."
  if [ "$arch" != "$(uname -m)" ]; then
    echo "set(CMAKE_SYSTEM_NAME Linux)"
    echo "set(CMAKE_SYSTEM_PROCESSOR $arch)"
  fi
  echo "set(CMAKE_C_COMPILER \"$OUT/cc\")"
  echo "set(CMAKE_CXX_COMPILER \"$OUT/c++\")"
  echo "set(CMAKE_AR \"$OUT/ar\" CACHE FILEPATH \"\")"
  echo "set(CMAKE_RANLIB \"$OUT/ranlib\" CACHE FILEPATH \"\")"
  # Zig's libc++ carries its debug information into every library: linked stripped.
  # -Bsymbolic: each library carries its own static libc++ with its symbols exported; without it
  # a library binds its libc++ calls to whichever copy the process loaded first (another
  # library's, or an executable's: llama-bench freed that copy's locale data at the first model
  # load, "double free or corruption") while its inlined code uses its own.
  echo 'set(CMAKE_SHARED_LINKER_FLAGS_INIT "-Wl,-Bsymbolic -s")'
  echo 'set(CMAKE_MODULE_LINKER_FLAGS_INIT "-Wl,-Bsymbolic -s")'
} >"$NEW/toolchain.cmake"
# Replaced only when it changed: a build may be using the wrappers right now.
if diff -rq "$NEW" "$OUT" >/dev/null 2>&1; then
  rm -rf "$NEW"
else
  rm -rf "$OUT" && mv "$NEW" "$OUT"
fi
echo "$OUT"
