#!/usr/bin/env bash
# Usage: build-ipk.sh [OUT_DIR] -- build sidecar_<version>-r<release>_all.ipk without the OpenWrt SDK
# and print its path. sidecar is pure Python, so one `all` package serves every router arch.
#
# The file is what OpenWrt's ipkg-build writes for opkg (OpenWrt <= 24.10): a gzip'd tar holding
# debian-binary, control.tar.gz and data.tar.gz, each tar with sorted names, numeric owner 0 and a
# fixed mtime (SOURCE_DATE_EPOCH, else the last commit's time), so the same tree gives the same bytes.
# Name, release, section, user and Depends are read from sidecar/Makefile: the feed build and this
# file cannot disagree. PYTHON_VERSION (default 3.11, OpenWrt 24.10's) picks the site-packages dir.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
makefile="$here/sidecar/Makefile"
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
pyver=${PYTHON_VERSION:-3.11}
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}

# make_var NAME: the value of `NAME:=...` in the Makefile, continuation lines joined.
make_var() {
  awk -v name="$1" '
    state == 1 { line = line " " $0 }
    state == 0 && $0 ~ "^[ \t]*" name ":=" { state = 1; line = substr($0, index($0, ":=") + 2) }
    state == 1 && !/\\$/ { state = 2 }
    END { gsub(/\\/, "", line); gsub(/[ \t]+/, " ", line); sub(/^ /, "", line); sub(/ $/, "", line); print line }
  ' "$makefile"
}
# make_block NAME: the lines between `define NAME` and `endef`.
make_block() {
  awk -v name="$1" '$0 == "define " name { on = 1; next } on && $0 == "endef" { exit } on' "$makefile"
}

version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/sidecar/__init__.py")
release=$(make_var PKG_RELEASE)
depends=$(make_var DEPENDS | tr -d '+' | sed 's/ /, /g')

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data="$work/data" control="$work/control"
mkdir -p "$control" "$data/usr/bin" "$data/etc/config" "$data/etc/init.d" "$data/etc/sidecar" \
  "$data/lib/upgrade/keep.d" "$data/usr/lib/python$pyver/site-packages"

# data: the package sources, the console script, the init script and the two config files.
(cd "$repo" && find sidecar -name '*.py' -exec cp --parents -t "$data/usr/lib/python$pyver/site-packages" {} +)
printf '%s\n' '#!/usr/bin/python3' 'import sys' 'from sidecar.cli import main' 'sys.exit(main())' \
  >"$data/usr/bin/sidecar"
cp "$here/sidecar/files/sidecar.init" "$data/etc/init.d/sidecar"
cp "$here/sidecar/files/sidecar.config" "$data/etc/config/sidecar"
cp "$repo/conf/ss-local.toml" "$data/etc/sidecar/sidecar.toml"
make_block Package/sidecar/conffiles >"$data/lib/upgrade/keep.d/sidecar"
find "$data" -type d -exec chmod 0755 {} +
find "$data" -type f -exec chmod 0644 {} +
chmod 0755 "$data/usr/bin/sidecar" "$data/etc/init.d/sidecar"
chmod 0600 "$data/etc/config/sidecar" "$data/etc/sidecar/sidecar.toml"   # as the feed's INSTALL_CONF

# control: the fields opkg and OpenWrt's default_postinst read.
{
  echo "Package: sidecar"
  echo "Version: $version-r$release"
  echo "Depends: $depends"
  echo "Source: feeds/sidecar/sidecar"
  echo "SourceName: sidecar"
  echo "Section: $(make_var SECTION)"
  echo "Require-User: $(make_var USERID)"
  echo "Maintainer: $(make_var PKG_MAINTAINER)"
  echo "Architecture: all"
  echo "Installed-Size: $(du -sb "$data" | cut -f1)"
  echo "Description: $(make_var TITLE)"
  make_block Package/sidecar/description | sed 's/^ */ /'
} >"$control/control"
make_block Package/sidecar/conffiles >"$control/conffiles"
install -m 0755 "$here/ipk/postinst" "$here/ipk/prerm" "$control/"

pack() {  # pack DIR ARCHIVE: a reproducible tar.gz of DIR's contents, as ipkg-build makes them
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$1" -cf - . | gzip -n9 >"$2"
}
outer="$work/outer"
mkdir "$outer"
echo "2.0" >"$outer/debian-binary"
pack "$control" "$outer/control.tar.gz"
pack "$data" "$outer/data.tar.gz"
ipk="$out/sidecar_${version}-r${release}_all.ipk"
tar --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$outer" \
  -cf - ./debian-binary ./data.tar.gz ./control.tar.gz | gzip -n9 >"$ipk"
echo "$ipk"
