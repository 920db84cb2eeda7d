#!/usr/bin/env bash
# The Debian packages a make target needs: installed with apt-get when missing and we are root,
# otherwise one line naming them and the command that installs them, and exit 1.
#   scripts/system-packages.sh build   what `make install` compiles the Vulkan backend with
#   scripts/system-packages.sh test    what the tests run: chromium (the chat page),
#                                      qemu-user (emulated CPUs, and arm64), lavapipe (the GPU
#                                      of CI)
set -euo pipefail
declare -A NEEDS=(
  [build]="glslc libvulkan-dev spirv-headers"
  [test]="chromium qemu-user mesa-vulkan-drivers"
)
wanted=()
for role in "$@"; do
  [ -n "${NEEDS[$role]+x}" ] || { echo "system-packages.sh: unknown role $role" >&2; exit 2; }
  read -r -a names <<<"${NEEDS[$role]}"
  wanted+=("${names[@]}")
done
command -v dpkg-query >/dev/null 2>&1 || {
  echo "not a Debian system: install the equivalents of ${wanted[*]} yourself" >&2
  exit 0
}
missing=()
for name in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$name" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$name")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
