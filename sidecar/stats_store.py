"""Counters that survive restarts: each role's counters, saved atomically every interval.

The file is msgpack `{role name: {counter: value}}`, written to a temporary file, flushed to disk
and renamed over the old one, so a crash (kill -9 included) leaves either the previous or the new
snapshot, never half of one, and loses at most one interval of counting.
"""

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import gevent
import msgpack

from sidecar.metrics import Counters

if TYPE_CHECKING:
    from sidecar.roles import Role

log = logging.getLogger("sidecar")
GAUGES = {"active"}  # a level, not a running total: not carried over a restart


def load(path: Path) -> dict[str, dict[str, int]]:
    """The saved totals, or {} when there is no usable file (a broken one is reported and ignored)."""
    try:
        data = msgpack.unpackb(path.read_bytes(), raw=False)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        log.warning("counters file %s unreadable (%s): counting starts from zero", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): {str(c): int(v) for c, v in vals.items() if isinstance(v, int)}
            for k, vals in data.items() if isinstance(vals, dict)}


def restore(counters: Counters, saved: dict[str, int]) -> None:
    """Add saved totals to fresh counters (names the role no longer has are dropped)."""
    for name, value in saved.items():
        if name in counters and name not in GAUGES:
            counters[name] += value


def save(path: Path, snapshot: dict[str, dict[str, int]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(msgpack.packb(snapshot))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class StatsStore:
    """Saves `snapshot()` to `path` every `interval_s` and once more at `stop()`."""

    def __init__(self, path: Path, interval_s: float, snapshot: Callable[[], Iterable[tuple[str, Counters]]]) -> None:
        self.path = path
        self._interval_s = interval_s
        self._snapshot = snapshot
        self._greenlet: gevent.Greenlet | None = None
        self.saved = load(path)
        self._restored: set[int] = set()

    def restore_once(self, role: "Role") -> None:
        """Add the saved totals of `role`'s name to its fresh counters (once per role object)."""
        if id(role) not in self._restored:
            self._restored.add(id(role))
            restore(role.counters, self.saved.get(role.config.name, {}))

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            gevent.sleep(self._interval_s)
            self.flush()

    def flush(self) -> None:
        data = dict(self.saved)  # roles not running now keep their last totals
        data.update({name: counters.snapshot() for name, counters in self._snapshot()})
        self.saved = data  # a role replaced by a reload starts from here
        try:
            save(self.path, data)
        except OSError as exc:
            log.warning("cannot save counters to %s: %s", self.path, exc)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
        self.flush()
        with contextlib.suppress(OSError):
            self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
