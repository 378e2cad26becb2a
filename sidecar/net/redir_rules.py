"""Firewall rules for ss-redir: LAN TCP is REDIRECTed and LAN UDP is TPROXY'd to the ss-redir port,
except for the bypass set (private ranges, the ss-server's own addresses, the user's list).

nftables (preferred): one table per port (`inet sidecar_redir_PORT`). iptables (where nft is missing):
chains SIDECAR_REDIR_PORT (nat) and SIDECAR_TPROXY_PORT (mangle), jumped to from PREROUTING, for
iptables and ip6tables. Either way `up` first removes what a killed process may have left, and
`down` removes exactly ours. TPROXY needs policy routing: packets marked `fwmark` are delivered
locally through routing table `route_table`.
"""

import ipaddress
import subprocess
from dataclasses import dataclass, field

from sidecar.errors import SidecarError

PRIVATE_V4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
              "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
PRIVATE_V6 = ("::1/128", "fc00::/7", "fe80::/10", "ff00::/8")


class RulesError(SidecarError):
    """nft or ip refused a command; the message has their words."""


@dataclass(frozen=True)
class RedirRules:
    port: int
    lan: str
    bypass: tuple[str, ...] = ()  # the ss-server's addresses and the user's extra CIDRs
    udp: bool = True
    fwmark: int = 0x5CA1
    route_table: int = 0x5CA
    private: tuple[str, ...] = field(default=PRIVATE_V4 + PRIVATE_V6)
    backend: str = "nft"  # or "iptables"

    @property
    def table(self) -> str:
        return f"sidecar_redir_{self.port}"

    def _sets(self) -> tuple[list[str], list[str]]:
        nets = [ipaddress.ip_network(n, strict=False) for n in (*self.private, *self.bypass)]
        return [str(n) for n in nets if n.version == 4], [str(n) for n in nets if n.version == 6]

    def ruleset(self) -> str:
        v4, v6 = self._sets()
        lan, port = self.lan, self.port
        mark = f"meta mark set {self.fwmark} accept"
        lines = [
            f"table inet {self.table} {{",
            f"  set bypass4 {{ type ipv4_addr; flags interval;{_elements(v4)} }}",
            f"  set bypass6 {{ type ipv6_addr; flags interval;{_elements(v6)} }}",
            "  chain redirect_tcp {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            f'    iifname "{lan}" ip daddr @bypass4 return',
            f'    iifname "{lan}" ip6 daddr @bypass6 return',
            f'    iifname "{lan}" meta l4proto tcp redirect to :{port}',
            "  }",
        ]
        if self.udp:
            lines += [
                "  chain tproxy_udp {",
                "    type filter hook prerouting priority mangle; policy accept;",
                f'    iifname "{lan}" ip daddr @bypass4 return',
                f'    iifname "{lan}" ip6 daddr @bypass6 return',
                f'    iifname "{lan}" meta nfproto ipv4 meta l4proto udp tproxy ip to :{port} {mark}',
                f'    iifname "{lan}" meta nfproto ipv6 meta l4proto udp tproxy ip6 to :{port} {mark}',
                "  }",
            ]
        return "\n".join([*lines, "}", ""])

    def up(self) -> None:
        """Install (replacing stale rules of the same port) and add the TPROXY routing."""
        self.down(quiet=True)
        if self.backend == "nft":
            _run(["nft", "-f", "-"], self.ruleset())
        else:
            for command in self.iptables_commands():
                _run(command)
        if self.udp:
            for family, everything in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
                _run(["ip", family, "rule", "add", "fwmark", str(self.fwmark), "lookup", str(self.route_table)])
                _run(["ip", family, "route", "replace", "local", everything, "dev", "lo", "table",
                      str(self.route_table)])

    def iptables_commands(self) -> list[list[str]]:
        v4, v6 = self._sets()
        commands = []
        for tool, nets in (("iptables", v4), ("ip6tables", v6)):
            redirect, tproxy = f"SIDECAR_REDIR_{self.port}", f"SIDECAR_TPROXY_{self.port}"
            commands += [[tool, "-t", "nat", "-N", redirect]]
            commands += [[tool, "-t", "nat", "-A", redirect, "-d", net, "-j", "RETURN"] for net in nets]
            commands += [[tool, "-t", "nat", "-A", redirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports",
                          str(self.port)],
                         [tool, "-t", "nat", "-I", "PREROUTING", "-i", self.lan, "-j", redirect]]
            if self.udp:
                commands += [[tool, "-t", "mangle", "-N", tproxy]]
                commands += [[tool, "-t", "mangle", "-A", tproxy, "-d", net, "-j", "RETURN"] for net in nets]
                commands += [[tool, "-t", "mangle", "-A", tproxy, "-p", "udp", "-j", "TPROXY", "--on-port",
                              str(self.port), "--tproxy-mark", str(self.fwmark)],
                             [tool, "-t", "mangle", "-I", "PREROUTING", "-i", self.lan, "-j", tproxy]]
        return commands

    def _iptables_removal(self) -> list[list[str]]:
        commands = []
        for tool in ("iptables", "ip6tables"):
            for table, chain in (("nat", f"SIDECAR_REDIR_{self.port}"), ("mangle", f"SIDECAR_TPROXY_{self.port}")):
                commands += [[tool, "-t", table, "-D", "PREROUTING", "-i", self.lan, "-j", chain],
                             [tool, "-t", table, "-F", chain], [tool, "-t", table, "-X", chain]]
        return commands

    def down(self, quiet: bool = False) -> None:
        """Remove the rules and the routing; with `quiet`, what is already gone is no error."""
        if self.backend == "nft":
            commands = [["nft", "delete", "table", "inet", self.table]]
        else:
            commands = self._iptables_removal()
            quiet = True  # a chain or jump already gone is fine: the aim is that none is left
        for family in ("-4", "-6"):
            commands += [["ip", family, "rule", "del", "fwmark", str(self.fwmark), "lookup", str(self.route_table)],
                         ["ip", family, "route", "flush", "table", str(self.route_table)]]
        for command in commands:
            try:
                _run(command)
            except RulesError:
                if not quiet and command[0] == "nft":
                    raise

    def installed(self) -> bool:
        if self.backend == "nft":
            out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
            return f"inet {self.table}" in out
        out = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=False).stdout
        return f"SIDECAR_REDIR_{self.port}" in out


def _elements(networks: list[str]) -> str:
    return f" elements = {{ {', '.join(networks)} }};" if networks else ""


def _run(command: list[str], stdin: str | None = None) -> None:
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False, timeout=20)
    except FileNotFoundError:
        raise RulesError(f"{command[0]} is not installed (apt-get install nftables iproute2)") from None
    if done.returncode:
        raise RulesError(f"{' '.join(command)}: {done.stderr.strip()}")
