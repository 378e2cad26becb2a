#!/bin/sh
# shellcheck shell=busybox
# OpenWrt's multi-arch package CI runs this on an emulated OpenWrt rootfs after installing the
# package, with the package name as $1. arm-builds/run.sh runs it in its Debian chroots too.
case "$1" in
sidecar)
	sidecar --version && sidecar check -c /etc/sidecar/sidecar.toml
	;;
esac
