"""Four network namespaces for chain tests: client -- wire -- relay -- server.

client (10.203.1.2) and relay (10.203.1.1) share a /24 but no veth: each has a veth into the `wire`
namespace, where bench/wire.py bridges the two ends frame by frame and impairs them (no netem here). The
relay forwards between that /24 and 10.203.2.0/24, which it shares with the server over a plain veth.
Without a running wire nothing passes between client and relay, so `create()` starts a clean one.
IPv6 is off everywhere (no ND or MLD frames through the wire), client and relay know each other's MAC
without ARP (so only the traffic under test crosses the wire), and the interfaces on either side of the
wire have their offloads off (see bench/wire.py). Always `delete()` it, or use it as a context manager.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from typing import Any

from bench.impair import Impairment
from bench.wire import WireProcess, disable_offloads, spawn_wire
from tests.e2e.netns import in_netns, sh


class ChainNet:
    """client -- wire -- relay -- server; `impair()` sets what the wire does ("up" = client -> relay)."""

    CLIENT_IP, RELAY_IP = "10.203.1.2", "10.203.1.1"
    RELAY_IP2, SERVER_IP = "10.203.2.1", "10.203.2.2"

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.client, self.wire, self.relay, self.server = (f"chain-{role}-{tag}" for role in
                                                           ("client", "wire", "relay", "server"))
        # two-letter prefixes (which namespace, facing whom) keep the names apart even when cut at 15
        self.client_dev, self.wire_a, self.wire_b, self.relay_dev, self.relay_dev2, self.server_dev = (
            f"{prefix}{tag}"[:15] for prefix in ("cw", "wc", "wr", "rw", "rs", "sr"))
        self.link: WireProcess | None = None

    @property
    def namespaces(self) -> tuple[str, str, str, str]:
        return self.client, self.wire, self.relay, self.server

    def create(self) -> None:
        """Build the namespaces and links and start a clean wire; on failure, remove what was built."""
        try:
            self._create()
            self.impair()
        except BaseException:
            self.delete()
            raise

    def delete(self) -> None:
        """Stop the wire and remove the namespaces (their veths go with them)."""
        try:
            self._stop_link()
        finally:
            for ns in self.namespaces:
                sh("ip", "netns", "del", ns, check=False)

    def impair(self, up: Impairment | None = None, down: Impairment | None = None,
               seed: int | None = None) -> WireProcess:
        """Replace the running wire with one impairing client -> relay by `up` and relay -> client by `down`
        (None: untouched). Frames crossing during the swap are lost."""
        self._stop_link()
        self.link = spawn_wire(self.wire, self.wire_a, self.wire_b, up=up, down=down, seed=seed)
        return self.link

    def run(self, ns: str, *args: str, check: bool = True) -> str:
        """A command's stdout, run inside namespace `ns`."""
        return sh("ip", "netns", "exec", ns, *args, check=check)

    def spawn(self, ns: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """A child process inside namespace `ns`; stop it before `delete()`, or its namespace outlives it."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen_kwargs)

    def __enter__(self) -> ChainNet:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def _create(self) -> None:
        for ns in self.namespaces:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        self._veth(self.client, self.client_dev, self.wire, self.wire_a)
        self._veth(self.wire, self.wire_b, self.relay, self.relay_dev)
        self._veth(self.relay, self.relay_dev2, self.server, self.server_dev)
        for ns, dev in ((self.client, self.client_dev), (self.wire, self.wire_a), (self.wire, self.wire_b),
                        (self.relay, self.relay_dev)):
            in_netns(ns, lambda dev=dev: disable_offloads(dev))
        for ns, dev, ip in ((self.client, self.client_dev, self.CLIENT_IP), (self.relay, self.relay_dev, self.RELAY_IP),
                            (self.relay, self.relay_dev2, self.RELAY_IP2),
                            (self.server, self.server_dev, self.SERVER_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        for ns, dev in ((self.client, self.client_dev), (self.wire, self.wire_a), (self.wire, self.wire_b),
                        (self.relay, self.relay_dev), (self.relay, self.relay_dev2), (self.server, self.server_dev)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        self._pin_neighbours()
        self.run(self.relay, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", self.client, "route", "add", "default", "via", self.RELAY_IP)
        sh("ip", "-n", self.server, "route", "add", "default", "via", self.RELAY_IP2)

    def _pin_neighbours(self) -> None:
        """Permanent ARP entries across the wire: ARP lost to an impairment would stall every flow for seconds
        (and frames queued while resolving are dropped outside the wire's counters)."""
        for ns, dev, peer_ip, peer_ns, peer_dev in (
                (self.client, self.client_dev, self.RELAY_IP, self.relay, self.relay_dev),
                (self.relay, self.relay_dev, self.CLIENT_IP, self.client, self.client_dev)):
            mac = json.loads(sh("ip", "-n", peer_ns, "-j", "link", "show", "dev", peer_dev))[0]["address"]
            sh("ip", "-n", ns, "neigh", "replace", peer_ip, "lladdr", mac, "dev", dev, "nud", "permanent")

    @staticmethod
    def _veth(ns1: str, dev1: str, ns2: str, dev2: str) -> None:
        sh("ip", "link", "add", dev1, "netns", ns1, "type", "veth", "peer", "name", dev2, "netns", ns2)

    def _stop_link(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            with contextlib.suppress(RuntimeError):  # it died already: nothing left to stop
                link.stop()
