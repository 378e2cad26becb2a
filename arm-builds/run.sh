#!/usr/bin/env bash
# Usage: run.sh ARCH [smoke] [proto] -- in a cached Debian chroot for ARCH (qemu-user emulation):
#   smoke  the feed's test.sh (version, `sidecar check` of the shipped TOML); then start `sidecar run`,
#          push data through its SOCKS5 port, stop it with SIGTERM, and print a JSON line with the
#          start-up time and idle RSS
#   proto  the protocol-core tests (tests/proto) with Debian's pytest and hypothesis
# Both by default. Needs root (debootstrap, chroot, namespaces).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source-path=SCRIPTDIR
. "$here/common.sh"

arch=${1:?usage: run.sh ARCH [smoke] [proto]}
shift
check_arch "$arch"
steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(smoke proto)

"$here/binfmt.sh"
dir=$("$here/chroot.sh" "$arch")
"$here/install-ipk.sh" "$arch" "$dir"

for step in "${steps[@]}"; do
  case "$step" in
    smoke)
      cp "$repo/openwrt/sidecar/test.sh" "$dir/tmp/sidecar-feed-test.sh"
      "$here/enter.sh" "$dir" sh /tmp/sidecar-feed-test.sh sidecar >&2
      cp "$here/smoke.py" "$dir/tmp/sidecar-smoke.py"
      printf '%s smoke: ' "$arch"
      "$here/enter.sh" "$dir" python3 /tmp/sidecar-smoke.py
      ;;
    proto)
      rm -rf "$dir/tmp/sidecar-tests"
      mkdir -p "$dir/tmp/sidecar-tests/tests"
      cp "$repo/pytest.ini" "$dir/tmp/sidecar-tests/"
      cp -r "$repo/tests/__init__.py" "$repo/tests/helpers.py" "$repo/tests/proto" "$dir/tmp/sidecar-tests/tests/"
      # The udp2raw capture vectors, where the tests look for them: ../shared beside the tree.
      rm -rf "$dir/tmp/shared"
      if [ -d "$repo/../shared/vectors" ]; then
        mkdir -p "$dir/tmp/shared" && cp -r "$repo/../shared/vectors" "$dir/tmp/shared/"
      fi
      # Compares cryptography's AES-CFB with pycryptodome's: it has nothing to compare without
      # cryptography, which these chroots leave out, as OpenWrt does.
      ignore=(--deselect tests/proto/test_kcp_crypt.py::test_openssl_and_pycryptodome_aes_cfb_agree)
      if [ ! -d "$dir/usr/local/lib/python3.11/dist-packages/cramjam" ]; then
        echo "$arch proto: no cramjam wheel for this arch: kcptun compression tests not run" >&2
        ignore+=(--ignore=tests/proto/test_snappy_frame.py --ignore=tests/proto/test_kcp_pipeline.py)
      fi
      echo "$arch proto:"
      # One pytest worker per core: the tests are CPU-bound under emulation.
      "$here/enter.sh" "$dir" sh -c 'cd /tmp/sidecar-tests && exec python3 -m pytest -p no:cacheprovider "$@"' \
        pytest -n "$(nproc)" tests/proto "${ignore[@]}"
      ;;
    *) die "unknown step '$step' (smoke, proto)" ;;
  esac
done
