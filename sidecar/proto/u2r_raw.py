"""The raw-mode "paths" of one udp2raw conn: how a blob becomes a whole IPv4 packet (spec 2.2-2.5).

A path knows the addresses and ports (or ICMP id) of one conn and the header state of its mode:
`packet(blob, now)` wraps a blob; `on_authentic(l4, n)` feeds back a received header whose blob
authenticated. Fake TCP lives in `faketcp.FakeTcp`, which has the same two methods.
"""

from __future__ import annotations

import random
from typing import Protocol

from sidecar.proto.faketcp import FakeTcp, IpIds
from sidecar.proto.ipv4 import DEFAULT_TTL, PROTO_ICMP, PROTO_TCP, PROTO_UDP, build_ipv4
from sidecar.proto.l4 import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    IcmpHeader,
    TcpSegment,
    UdpHeader,
    build_icmp_echo,
    build_udp,
)

RAW_MODES = ("faketcp", "easy-faketcp", "udp", "icmp")
MODE_ALIASES = {"easyfaketcp": "easy-faketcp", "easy_faketcp": "easy-faketcp"}
PROTOCOL = {"faketcp": PROTO_TCP, "easy-faketcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP}


def canonical_mode(mode: str) -> str:
    """The raw mode name for any spelling udp2raw accepts; ValueError for others."""
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in RAW_MODES:
        raise ValueError(f"unknown raw mode {mode!r}, expected one of {RAW_MODES}")
    return mode


class RawPath(Protocol):
    def packet(self, payload: bytes, now: float) -> bytes: ...

    def on_authentic(self, l4: TcpSegment | UdpHeader | IcmpHeader, payload_len: int) -> None: ...


class UdpPath:
    """--raw-mode udp: a plain UDP header, nothing to track."""

    __slots__ = ("src", "dst", "sport", "dport", "ids", "ttl")

    def __init__(self, src: bytes, dst: bytes, sport: int, dport: int, ids: IpIds, ttl: int = DEFAULT_TTL) -> None:
        self.src, self.dst, self.sport, self.dport, self.ids, self.ttl = src, dst, sport, dport, ids, ttl

    def packet(self, payload: bytes, now: float) -> bytes:
        udp = build_udp(self.src, self.dst, self.sport, self.dport, payload)
        return build_ipv4(self.src, self.dst, PROTO_UDP, len(udp), self.ids.next(), self.ttl) + udp

    def on_authentic(self, l4: TcpSegment | UdpHeader | IcmpHeader, payload_len: int) -> None:
        pass


class IcmpPath:
    """--raw-mode icmp: the client sends requests numbered 0, 1, 2...; the server replies with the
    highest number it has seen from that client (wrap-aware), so replies pair with requests."""

    __slots__ = ("src", "dst", "ident", "ids", "ttl", "type", "seq", "client")

    def __init__(self, src: bytes, dst: bytes, ident: int, ids: IpIds, *, client: bool,
                 ttl: int = DEFAULT_TTL) -> None:
        self.src, self.dst, self.ident, self.ids, self.ttl, self.client = src, dst, ident, ids, ttl, client
        self.type = ICMP_ECHO_REQUEST if client else ICMP_ECHO_REPLY
        self.seq = 0

    def packet(self, payload: bytes, now: float) -> bytes:
        icmp = build_icmp_echo(self.type, self.ident, self.seq, payload)
        if self.client:
            self.seq = (self.seq + 1) & 0xFFFF
        return build_ipv4(self.src, self.dst, PROTO_ICMP, len(icmp), self.ids.next(), self.ttl) + icmp

    def on_authentic(self, l4: TcpSegment | UdpHeader | IcmpHeader, payload_len: int) -> None:
        if not self.client and isinstance(l4, IcmpHeader) and 0 < (l4.seq - self.seq) & 0xFFFF < 0x8000:
            self.seq = l4.seq


def make_path(mode: str, src: bytes, dst: bytes, sport: int, dport: int, ids: IpIds, rng: random.Random, *,
              client: bool, seq_mode: int = 3, ttl: int = DEFAULT_TTL) -> FakeTcp | UdpPath | IcmpPath:
    """The path of one conn; for icmp the client's port is the echo identifier (`sport` on the client,
    `dport` on the server)."""
    if mode in ("faketcp", "easy-faketcp"):
        return FakeTcp(src, dst, sport, dport, ids, rng, seq_mode=seq_mode, ttl=ttl)
    if mode == "udp":
        return UdpPath(src, dst, sport, dport, ids, ttl)
    return IcmpPath(src, dst, sport if client else dport, ids, client=client, ttl=ttl)
