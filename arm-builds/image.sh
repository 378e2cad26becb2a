#!/usr/bin/env bash
# Usage: image.sh ARCH -- build the Dockerfile for ARCH (amd64, arm64 or armhf = linux/arm/v7)
# without a daemon, with buildah (vfs storage, chroot isolation; foreign arches run under
# qemu-user), then run `sidecar --version` and `sidecar check` in the image. Prints the image name.
#
# No registry is reachable here, so the base is made locally: a debootstrap minbase of bookworm,
# imported as localhost/sidecar-base:bookworm-ARCH and passed as BASE (the Dockerfile's default is
# debian:bookworm-slim). The base is cached as a tarball under $CACHE_DIR. The host's own extra CA
# certificates (/usr/local/share/ca-certificates) go into it, so pip and apt inside the build trust
# what the host trusts (this machine reaches PyPI through a TLS-inspecting proxy).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source-path=SCRIPTDIR
. "$here/common.sh"

arch=${1:?usage: image.sh ARCH}
case "$arch" in
  amd64) platform=linux/amd64 ;;
  arm64) platform=linux/arm64 ;;
  armhf) platform=linux/arm/v7 ;;
  *) die "image.sh: unknown arch '$arch' (amd64, arm64, armhf)" ;;
esac
storage=(--storage-driver vfs)

base_tar="$CACHE_DIR/image-base-$SUITE-$arch.tar"
mkdir -p "$CACHE_DIR"
exec 9>"$base_tar.lock"
flock 9
if [ ! -s "$base_tar" ]; then
  "$here/binfmt.sh"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "arm-builds: debootstrap $SUITE/$arch for the image base (a full second stage)" >&2
  debootstrap --arch="$arch" --variant=minbase "$SUITE" "$root" "$MIRROR" >"$base_tar.log" 2>&1 \
    || { tail -20 "$base_tar.log" >&2; die "debootstrap failed"; }
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  fi
  tar --numeric-owner -C "$root" -cf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
fi
flock -u 9

base="localhost/sidecar-base:$SUITE-$arch"
if ! buildah "${storage[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  ctx=$(mktemp -d)
  ln "$base_tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$base_tar" "$ctx/rootfs.tar"
  printf 'FROM scratch\nADD rootfs.tar /\n' >"$ctx/Containerfile"
  buildah "${storage[@]}" bud --isolation chroot --platform "$platform" -t "$base" -f "$ctx/Containerfile" "$ctx" >&2
  rm -rf "$ctx"
fi

image="localhost/sidecar:$arch"
buildah "${storage[@]}" bud --isolation chroot --platform "$platform" --pull-never \
  --build-arg BASE="$base" -t "$image" "$repo" >&2
ctr=$(buildah "${storage[@]}" from --pull-never "$image")
# shellcheck disable=SC2016  # expanded in the container
buildah "${storage[@]}" run --isolation chroot "$ctr" -- sh -ec '
  test "$(id -u)" = 10001
  sidecar --version
  sidecar check
  python3 -c "import cramjam, Cryptodome, gevent, msgpack"
' >&2
buildah "${storage[@]}" rm "$ctr" >/dev/null
echo "$image"
