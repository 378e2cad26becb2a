#!/usr/bin/env bash
# Usage: install-ipk.sh ARCH CHROOT -- install this tree's OpenWrt package into CHROOT as opkg would:
# unpack data.tar.gz of the .ipk that openwrt/build-ipk.sh makes, then run its postinst (which
# byte-compiles with the chroot's own python3). So the emulated runs use the very files a router gets.
# Debian's python3 does not search OpenWrt's /usr/lib/python3.11/site-packages: a .pth adds it.
# Also installs PyPI's cramjam wheel for ARCH where one exists (kcptun compression; Debian 12 has
# no cramjam, and PyPI has no mipsel wheel).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR
. "$here/common.sh"
arch=${1:?usage: install-ipk.sh ARCH CHROOT}
dir=${2:?usage: install-ipk.sh ARCH CHROOT}
repo=$(dirname "$here")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ipk=$("$repo/openwrt/build-ipk.sh" "$work")

# Drop the previous run's install (same paths as the package's data.tar.gz).
rm -rf "$dir/usr/lib/python3.11/site-packages/sidecar" "$dir/usr/bin/sidecar" "$dir/etc/sidecar" \
  "$dir/etc/init.d/sidecar" "$dir/etc/config/sidecar" "$dir/lib/upgrade/keep.d/sidecar"
tar -xzOf "$ipk" ./data.tar.gz | tar -xzf - -C "$dir" --no-same-owner --keep-directory-symlink
tar -xzOf "$ipk" ./control.tar.gz | tar -xzOf - ./postinst >"$dir/tmp/sidecar.postinst"
echo /usr/lib/python3.11/site-packages >"$dir/usr/lib/python3/dist-packages/openwrt-site-packages.pth"
chroot "$dir" /bin/sh /tmp/sidecar.postinst configure
rm "$dir/tmp/sidecar.postinst"

case "$arch" in
  armhf) platform=manylinux2014_armv7l ;;
  arm64) platform=manylinux2014_aarch64 ;;
  s390x) platform=manylinux2014_s390x ;;
  *) exit 0 ;;
esac
[ -d "$dir/usr/local/lib/python3.11/dist-packages/cramjam" ] && exit 0
mkdir -p "$CACHE_DIR/wheels"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform "$platform" --python-version 3.11 -d "$CACHE_DIR/wheels" "cramjam>=2.6" 2>/dev/null
wheel=$(find "$CACHE_DIR/wheels" -name "cramjam-*${platform#manylinux2014_}.whl" | sort -V | tail -1)
cp "$wheel" "$dir/tmp/"
chroot "$dir" python3 -m installer --no-compile-bytecode "/tmp/${wheel##*/}"
rm "$dir/tmp/${wheel##*/}"
