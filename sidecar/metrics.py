"""Named counters of one role: plain integers, cheap to bump on a hot path, printable as one line."""

from collections.abc import Iterable


class Counters:
    """A fixed set of named integer counters (`c["bytes_up"] += n`)."""

    __slots__ = ("_values",)

    def __init__(self, names: Iterable[str]) -> None:
        self._values = dict.fromkeys(names, 0)

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __setitem__(self, name: str, value: int) -> None:
        if name not in self._values:
            raise KeyError(name)
        self._values[name] = value

    def snapshot(self) -> dict[str, int]:
        return dict(self._values)

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self._values.items())
