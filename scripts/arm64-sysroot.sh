#!/usr/bin/env bash
# Debian's arm64 CPython in a sysroot, for running a .pyz under qemu-aarch64 on an x86-64 host:
#   scripts/arm64-sysroot.sh bookworm     # CPython 3.11 (Debian 12)
#   scripts/arm64-sysroot.sh trixie       # CPython 3.13 (Debian 13)
# The packages are downloaded with apt-get in a private apt state (its own sources list, lists,
# cache and an empty dpkg status; APT::Architecture=arm64) and unpacked with dpkg-deb -x: the
# host's dpkg never learns of arm64. Once, into ${LLAMAPYZ_DEV_CACHE:-~/.cache/llamapyz-dev}.
# Prints the sysroot on stdout; run with: qemu-aarch64 -L SYSROOT SYSROOT/usr/bin/python3.X.
set -euo pipefail
SUITE=${1:?usage: arm64-sysroot.sh bookworm|trixie}
case "$SUITE" in
  bookworm) PY=python3.11 ;;
  trixie) PY=python3.13 ;;
  *) echo "arm64-sysroot.sh: unknown suite $SUITE (bookworm or trixie)" >&2; exit 2 ;;
esac
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
ROOT="$CACHE/sysroots/debian-$SUITE-arm64"
if [ -x "$ROOT/usr/bin/$PY" ] && [ -f "$ROOT/.ready" ] && [ -e "$ROOT/lib/ld-linux-aarch64.so.1" ]; then
  echo "$ROOT"
  exit 0
fi
echo "fetching Debian $SUITE's arm64 $PY into $ROOT (once) ..." >&2
mkdir -p "$CACHE/sysroots"
apt_dir=$(mktemp -d "$CACHE/sysroots/.apt.XXXXXX")
trap 'rm -rf "$apt_dir" "$ROOT.tmp"' EXIT
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/etc/preferences.d"
echo "deb [arch=arm64] http://deb.debian.org/debian $SUITE main" >"$apt_dir/etc/sources.list"
: >"$apt_dir/status"
apt_opts=(-o "APT::Architecture=arm64" -o "APT::Architectures::=arm64"
  -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list" -o "Dir::Etc::SourceParts=-"
  -o "Dir::Etc::Preferences=-" -o "Dir::Etc::PreferencesParts=$apt_dir/etc/preferences.d"
  -o "Dir::State=$apt_dir" -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir"
  -o "Dir::State::status=$apt_dir/status" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root" -o "APT::Install-Recommends=0")
apt-get "${apt_opts[@]}" -qq update >&2
# The interpreter and what it loads (its C libraries, zlib, ssl, ffi, …): apt resolves them
# from an empty system, so the sysroot holds every library python needs and nothing else;
# libstdc++6 as every Debian has it, and no libgomp1, so the file's own OpenMP runtime is used.
apt-get "${apt_opts[@]}" -qq --download-only -y install "$PY" libstdc++6 >&2
rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
for deb in "$apt_dir"/archives/*.deb; do
  dpkg-deb -x "$deb" "$ROOT.tmp"
done
# Debian 13's packages install into /usr only (merged /usr: its base-files links /lib there).
for top in lib bin sbin; do
  [ -e "$ROOT.tmp/$top" ] || ln -s "usr/$top" "$ROOT.tmp/$top"
done
[ -x "$ROOT.tmp/usr/bin/$PY" ] || { echo "arm64-sysroot.sh: no usr/bin/$PY in the packages" >&2; exit 1; }
touch "$ROOT.tmp/.ready"
rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT"
echo "$ROOT"
