"""Named counters of one role: plain integers, cheap to bump on a hot path, printable as one line."""

from collections.abc import Iterable


class Counters(dict[str, int]):
    """A set of named integer counters, all present from the start (`c["bytes_up"] += n`).

    A dict, so that bumping one on a per-packet path is a C-level operation.
    """

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__(dict.fromkeys(names, 0))

    def snapshot(self) -> dict[str, int]:
        return dict(self)

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.items())
