#!/usr/bin/env bash
# Makes llama.cpp's tool libraries (llama-common, llama-bench's and llama-server's logic) STATIC in
# the source tree SRC, so each tool links them into its executable. They hand C++ objects to one
# another; Zig's libc++ is static, one copy in each shared library, and two copies in a process
# free each other's memory (llama-bench: "double free or corruption"). llama.cpp's own libraries
# (libllama, libggml*, libmtmd) stay shared: only their C API is crossed.
# Each file is replaced by a new one (SRC may be a hard-linked copy of a shared tree).
#   scripts/static-tools.sh SRC
set -euo pipefail
SRC=${1:?usage: static-tools.sh SRC}
edit() {  # FILE SED-EXPRESSION: fails when the expression changes nothing
  sed "$2" "$SRC/$1" >"$SRC/$1.new"
  if cmp -s "$SRC/$1" "$SRC/$1.new"; then
    rm -f "$SRC/$1.new"
    echo "static-tools.sh: nothing to change in $1" >&2
    exit 1
  fi
  rm -f "$SRC/$1" && mv "$SRC/$1.new" "$SRC/$1"
}
edit common/CMakeLists.txt 's/^add_library(${TARGET}$/add_library(${TARGET} STATIC/'
edit tools/server/CMakeLists.txt 's/^add_library(${TARGET}$/add_library(${TARGET} STATIC/'
edit tools/llama-bench/CMakeLists.txt 's/^add_library(${TARGET} llama-bench.cpp)$/add_library(${TARGET} STATIC llama-bench.cpp)/'
