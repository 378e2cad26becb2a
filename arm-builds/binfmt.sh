#!/usr/bin/env bash
# Make the kernel run foreign-arch ELF files through qemu-user-static: mount binfmt_misc if it is
# not mounted (it is not on a fresh VM here) and enable Debian's qemu registrations.
set -euo pipefail

if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
for fmt in qemu-arm qemu-aarch64 qemu-mipsel qemu-s390x; do
  [ -e "/proc/sys/fs/binfmt_misc/$fmt" ] || update-binfmts --enable "$fmt"
done
