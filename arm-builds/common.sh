# shellcheck shell=bash
# Shared settings for the arm-builds scripts (sourced, not run).

SUITE=bookworm                     # the last Debian release with mipsel; see README.md
MIRROR=${SIDECAR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE_DIR=${SIDECAR_CHROOT_CACHE:-/var/cache/sidecar-chroots}
ARCHES="armhf arm64 mipsel s390x"
LAYOUT=2                           # bump when chroot.sh builds differently: old caches are not reused

# Runtime deps from Debian, plus what the protocol-core tests and the wheel install need. No
# python3-cryptography, as on OpenWrt: pycryptodome does the work (and Debian 12's cryptography 38
# rejects the bytearray/memoryview arguments sidecar passes, which 41+ accept).
PACKAGES=(python3 python3-gevent python3-pycryptodome python3-msgpack python3-crc32c
          python3-pytest python3-pytest-xdist python3-hypothesis python3-installer)

die() { echo "arm-builds: $*" >&2; exit 1; }

check_arch() {
  case " $ARCHES " in
    *" $1 "*) ;;
    *) die "unknown arch '$1' (one of: $ARCHES)" ;;
  esac
}

# The cache folder of ARCH's chroot: keyed by suite, arch and package list, so a change of either
# builds a fresh one instead of reusing a stale one.
chroot_dir() {
  local key
  key=$(printf '%s\n' "$LAYOUT" "$SUITE" "$1" "$MIRROR" "${PACKAGES[@]}" | sha256sum | cut -c1-12)
  echo "$CACHE_DIR/$SUITE-$1-$key"
}
