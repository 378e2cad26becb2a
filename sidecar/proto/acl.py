"""Access control lists in shadowsocks-libev's ACL file format: which destinations go where.

A file has sections; each line under a section is an IPv4/IPv6 address or CIDR, or else a regular
expression matched against host names (libev's rule, e.g. `(^|\\.)example\\.cn$`). `#` starts a comment.

    [proxy_all] | [bypass_all]     the default for anything no list names (proxy_all if neither)
    [bypass_list] / [white_list]   go direct
    [proxy_list] / [black_list]    go through the proxy
    [outbound_block_list]          the server refuses these destinations

A host name is matched by the name lists only; an address by the address lists only (no lookups).
"""

import bisect
import ipaddress
import re
from dataclasses import dataclass, field

from sidecar.errors import ConfigError

PROXY, DIRECT = "proxy", "direct"
_SECTIONS = {
    "bypass_list": "bypass", "white_list": "bypass",
    "proxy_list": "proxy", "black_list": "proxy",
    "outbound_block_list": "block",
}


class AddressSet:
    """IPv4 and IPv6 networks, merged into sorted disjoint ranges and searched by bisection."""

    def __init__(self, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._ranges: dict[int, tuple[list[int], list[int]]] = {}
        for version in (4, 6):
            spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in networks if n.version == version)
            starts: list[int] = []
            ends: list[int] = []
            for start, end in spans:
                if ends and start <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], end)
                else:
                    starts.append(start)
                    ends.append(end)
            self._ranges[version] = (starts, ends)

    def __contains__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        starts, ends = self._ranges[address.version]
        value = int(address)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]


@dataclass
class _Rules:
    networks: list = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)

    def compile(self) -> tuple[AddressSet, re.Pattern[str] | None]:
        pattern = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE) if self.patterns else None
        return AddressSet(self.networks), pattern


class Acl:
    """Decisions for destinations: `route(host)` is PROXY or DIRECT; `blocked(host)` for the server side."""

    def __init__(self, default: str, lists: dict[str, _Rules]) -> None:
        self.default = default
        self._lists = {name: rules.compile() for name, rules in lists.items()}

    def _matches(self, name: str, host: str) -> bool:
        addresses, pattern = self._lists[name]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return pattern is not None and pattern.search(host) is not None
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address in addresses

    def route(self, host: str) -> str:
        if self._matches("bypass", host):
            return DIRECT
        if self._matches("proxy", host):
            return PROXY
        return self.default

    def blocked(self, host: str) -> bool:
        return self._matches("block", host)


def parse_acl(text: str, source: str = "acl") -> Acl:
    """An Acl from libev ACL text; a bad line is a ConfigError naming the file and line."""
    default, current = PROXY, None
    lists = {name: _Rules() for name in ("bypass", "proxy", "block")}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section in ("proxy_all", "accept_all"):
                default, current = PROXY, None
            elif section in ("bypass_all", "reject_all"):
                default, current = DIRECT, None
            elif section in _SECTIONS:
                current = _SECTIONS[section]
            else:
                raise ConfigError(f"{source}:{number}", line, f"unknown section; use one of {', '.join(_SECTIONS)}")
            continue
        if current is None:
            raise ConfigError(f"{source}:{number}", line, "put the rule under a section such as [bypass_list]")
        _add_rule(lists[current], line, f"{source}:{number}")
    return Acl(default, lists)


def _add_rule(rules: _Rules, line: str, where: str) -> None:
    try:
        rules.networks.append(ipaddress.ip_network(line, strict=False))
        return
    except ValueError:
        pass
    try:
        re.compile(line)
    except re.error as exc:
        raise ConfigError(where, line, f"neither an address/CIDR nor a valid regular expression ({exc})") from None
    rules.patterns.append(line)


PRIVATE_NETWORKS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
)


def private_block_list() -> Acl:
    """The server's default outbound block list: loopback, private, link-local, multicast and reserved ranges."""
    return parse_acl("[outbound_block_list]\n" + "\n".join(PRIVATE_NETWORKS), "built-in private ranges")
