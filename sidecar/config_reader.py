"""Typed reading of one TOML table, with errors that name the key, the value and the fix."""

import difflib
import ipaddress
from typing import Any, TypeVar

from sidecar.errors import ConfigError

T = TypeVar("T")
REQUIRED: Any = object()

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "a table", list: "a list"}


class Section:
    """One table of the config file; `finish()` rejects any key that was never read."""

    def __init__(self, path: str, table: dict[str, Any]) -> None:
        self.path = path
        self._table = table
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def has(self, name: str) -> bool:
        return name in self._table

    def keys(self) -> list[str]:
        return list(self._table)

    def get(self, name: str, kind: type[T], default: Any = REQUIRED, example: str = "") -> T:
        self._read.add(name)
        if name not in self._table:
            if default is REQUIRED:
                hint = f", e.g. {name} = {example}" if example else ""
                raise ConfigError(self.key(name), None, f"this key is required{hint}")
            return default
        value = self._table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(self.key(name), value, f"expected {_TYPE_NAMES.get(kind, kind.__name__)}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(self.key(name), value, f"use one of: {', '.join(choices)}")
        return value

    def number(self, name: str, kind: type[T], default: Any, low: float, high: float) -> T:
        value = self.get(name, kind, default)
        if not low <= value <= high:  # type: ignore[operator]
            raise ConfigError(self.key(name), value, f"use a value from {low} to {high}")
        return value

    def port(self, name: str, default: Any = REQUIRED) -> int:
        return self.number(name, int, default, 1, 65535)

    def ip(self, name: str, default: Any = REQUIRED) -> str:
        value = self.get(name, str, default, example='"127.0.0.1"')
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ConfigError(self.key(name), value, 'give an IPv4 or IPv6 address, e.g. "127.0.0.1" or "::"') from None

    def host(self, name: str, default: Any = REQUIRED) -> str:
        value = self.get(name, str, default, example='"203.0.113.7"')
        if not value or len(value) > 253 or any(c.isspace() for c in value):
            raise ConfigError(self.key(name), value, "give an IP address or a host name")
        return value

    def finish(self) -> None:
        for name in self._table:
            if name not in self._read:
                close = difflib.get_close_matches(name, sorted(self._read), n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(self._read))}"
                raise ConfigError(self.key(name), self._table[name], f"unknown key; {fix}")
