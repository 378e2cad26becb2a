#!/usr/bin/env bash
# Usage: chroot.sh ARCH -- print the path of a Debian chroot for ARCH, building it on first use.
# Built chroots are kept under $CACHE_DIR (keyed by arch + package list); a second call is instant.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR
. "$here/common.sh"

arch=${1:?usage: chroot.sh ARCH}
check_arch "$arch"
dir=$(chroot_dir "$arch")
mkdir -p "$CACHE_DIR"

# One builder per arch at a time (two test runs may start together); the loser reuses the result.
exec 9>"$dir.lock"
flock 9
if [ ! -x "$dir/usr/bin/python3" ]; then
  "$here/binfmt.sh"
  tmp="$dir.tmp"
  rm -rf "$tmp"
  echo "arm-builds: debootstrap $SUITE/$arch into $dir (first run: about a minute)" >&2
  start=$(date +%s)
  # First stage only: resolve and download the packages, unpack the base. The packages are then
  # unpacked natively with dpkg-deb; no maintainer script runs, so nothing runs under emulation
  # here (a full second stage under qemu took 7.5 min for s390x on 2 busy cores; this takes ~1).
  debootstrap --foreign --arch="$arch" --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    "$SUITE" "$tmp" "$MIRROR" >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; die "debootstrap failed"; }
  for deb in "$tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$tmp"; done
  rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/debootstrap"
  # Byte-compile Python's library natively, as the skipped postinst scripts would have: bytecode
  # does not depend on the CPU, only on the Python version, whose magic number must match.
  magic='import importlib.util as u; print(u.MAGIC_NUMBER.hex())'
  if [ "$(chroot "$tmp" /usr/bin/python3 -c "$magic")" = "$(python3 -c "$magic")" ]; then
    python3 -m compileall -q -j 2 -s "$tmp" -p / "$tmp/usr/lib/python3.11" "$tmp/usr/lib/python3/dist-packages"
  else
    echo "arm-builds: this python3 is not the chroot's version: its library compiles on first use" >&2
  fi
  mv "$tmp" "$dir"
  echo "arm-builds: $arch chroot built in $(( $(date +%s) - start )) s" >&2
fi
echo "$dir"
