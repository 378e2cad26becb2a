#!/usr/bin/env bash
# Usage: enter.sh CHROOT CMD... -- run CMD inside CHROOT, in private mount and network namespaces.
# The private mount namespace drops /proc when CMD ends (nothing to clean up, even after a crash);
# the private network namespace (loopback only) lets the demo take port 1080 while other tests
# on this machine use it too, and keeps the smoke test off every real network. CI is passed in, so
# that a test that would skip fails under CI=true inside the chroot too.
set -euo pipefail
dir=${1:?usage: enter.sh CHROOT CMD...}
shift
# shellcheck disable=SC2016  # expanded by the inner sh
CI=${CI:-} exec unshare --mount --net --propagation private -- sh -ec '
  dir=$1; shift
  mount -t proc proc "$dir/proc"
  ip link set lo up
  exec chroot "$dir" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME=/root CI="$CI" "$@"
' enter "$dir" "$@"
