#!/usr/bin/env bash
# Debian's own CPython in a sysroot, for running a .pyz with another Debian's Python and libraries
# (qemu-aarch64 -L SYSROOT for arm64 on an x86-64 host, qemu-x86_64 -L SYSROOT for an older x86-64):
#   scripts/debian-sysroot.sh bookworm [arm64]     # CPython 3.11 (Debian 12)
#   scripts/debian-sysroot.sh trixie [arm64]       # CPython 3.13 (Debian 13)
#   scripts/debian-sysroot.sh bullseye amd64       # CPython 3.9, glibc 2.31 (Debian 11)
# The packages are downloaded with apt-get in a private apt state (its own sources list, lists,
# cache and an empty dpkg status; APT::Architecture=ARCH) and unpacked with dpkg-deb -x: the
# host's dpkg never learns of them. Once, into ${LLAMAPYZ_DEV_CACHE:-~/.cache/llamapyz-dev}.
# Prints the sysroot on stdout; run with: qemu-aarch64 -L SYSROOT SYSROOT/usr/bin/python3.X.
set -euo pipefail
SUITE=${1:?usage: debian-sysroot.sh bullseye|bookworm|trixie [arm64|amd64]}
ARCH=${2:-arm64}
case "$SUITE" in
  bullseye) PY=python3.9 ;;
  bookworm) PY=python3.11 ;;
  trixie) PY=python3.13 ;;
  *) echo "debian-sysroot.sh: unknown suite $SUITE (bullseye, bookworm or trixie)" >&2; exit 2 ;;
esac
case "$ARCH" in
  arm64 | amd64) ;;
  *) echo "debian-sysroot.sh: unknown architecture $ARCH (arm64 or amd64)" >&2; exit 2 ;;
esac
CACHE=${LLAMAPYZ_DEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamapyz-dev}
ROOT="$CACHE/sysroots/debian-$SUITE-$ARCH"
if [ -x "$ROOT/usr/bin/$PY" ] && [ -f "$ROOT/.ready" ] && [ -e "$ROOT/lib" ]; then
  echo "$ROOT"
  exit 0
fi
echo "fetching Debian $SUITE's $ARCH $PY into $ROOT (once) ..." >&2
mkdir -p "$CACHE/sysroots"
apt_dir=$(mktemp -d "$CACHE/sysroots/.apt.XXXXXX")
trap 'rm -rf "$apt_dir" "$ROOT.tmp"' EXIT
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/etc/preferences.d"
echo "deb [arch=$ARCH] http://deb.debian.org/debian $SUITE main" >"$apt_dir/etc/sources.list"
: >"$apt_dir/status"
apt_opts=(-o "APT::Architecture=$ARCH" -o "APT::Architectures::=$ARCH"
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
[ -x "$ROOT.tmp/usr/bin/$PY" ] || { echo "debian-sysroot.sh: no usr/bin/$PY in the packages" >&2; exit 1; }
touch "$ROOT.tmp/.ready"
rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT"
echo "$ROOT"
