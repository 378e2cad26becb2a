"""Three network namespaces, client -- wire -- server, with bench/wire.py impairing the frames between them
(root): the lossy links of the `u2r` and `chain` suites.

    client ns: client_dev (client_ip/24) == veth == wire ns: wire_c [bench.wire] wire_s == veth == server ns

Offloads are off on all four interfaces (the wire reads raw frames, see bench/wire.py) and each end's ARP
entry for the other is pinned, so no ARP exchange is lost to the impairment.
"""

import contextlib
import json
from dataclasses import dataclass

from bench.impair import Impairment
from bench.netns import in_netns, sh
from bench.wire import WireProcess, disable_offloads, spawn_wire

DELAY_MS = 20.0
LOSSES = (0.01, 0.05, 0.10)
# (name, impairment each way): the loss levels every suite measures besides its clean link
LOSSY_LINKS = [(f"{loss * 100:.0f}% loss, {DELAY_MS:.0f} ms each way", Impairment(delay_ms=DELAY_MS, loss=loss))
               for loss in LOSSES]


@dataclass(frozen=True)
class WireNet:
    """Names and addresses of one client -- wire -- server setup; client and server share one /24."""

    client_ns: str
    wire_ns: str
    server_ns: str
    client_dev: str
    wire_c: str
    wire_s: str
    server_dev: str
    client_ip: str
    server_ip: str

    def create(self) -> None:
        """The three namespaces (no IPv6), both veth pairs up with offloads off, ARP pinned both ways."""
        self.delete()
        for ns in (self.client_ns, self.wire_ns, self.server_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "link", "add", self.client_dev, "netns", self.client_ns, "type", "veth", "peer", "name",
           self.wire_c, "netns", self.wire_ns)
        sh("ip", "link", "add", self.wire_s, "netns", self.wire_ns, "type", "veth", "peer", "name",
           self.server_dev, "netns", self.server_ns)
        ends = self._ends()
        for ns, dev in ends:
            in_netns(ns, lambda dev=dev: disable_offloads(dev))
        for ns, dev, ip in ((self.client_ns, self.client_dev, self.client_ip),
                            (self.server_ns, self.server_dev, self.server_ip)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        for ns, dev in ends:
            sh("ip", "-n", ns, "link", "set", dev, "up")
        self._pin_arp()

    def delete(self) -> None:
        for ns in (self.client_ns, self.wire_ns, self.server_ns):
            sh("ip", "netns", "del", ns, check=False)

    def set_link(self, old: WireProcess | None, impairment: Impairment | None, seed: int = 7) -> WireProcess:
        """Replace the running wire (up = client -> server) with one impairing both ways by `impairment`."""
        if old is not None:
            with contextlib.suppress(RuntimeError):
                old.stop()
        return spawn_wire(self.wire_ns, self.wire_c, self.wire_s, both=impairment or Impairment(), seed=seed)

    def _ends(self) -> tuple[tuple[str, str], ...]:
        return ((self.client_ns, self.client_dev), (self.wire_ns, self.wire_c), (self.wire_ns, self.wire_s),
                (self.server_ns, self.server_dev))

    def _pin_arp(self) -> None:
        for ns, dev, peer_ip, peer_ns, peer_dev in (
                (self.client_ns, self.client_dev, self.server_ip, self.server_ns, self.server_dev),
                (self.server_ns, self.server_dev, self.client_ip, self.client_ns, self.client_dev)):
            mac = json.loads(sh("ip", "-n", peer_ns, "-j", "link", "show", "dev", peer_dev))[0]["address"]
            sh("ip", "-n", ns, "neigh", "replace", peer_ip, "lladdr", mac, "dev", dev, "nud", "permanent")
