"""Classic BPF programs for the raw receive socket, so the process sees only its own raw traffic.

The socket is AF_PACKET/SOCK_DGRAM, so offset 0 is the IPv4 header. A program accepts a packet when
every given field matches (protocol, addresses, ports or ICMP type/id) and rejects outgoing copies
and non-first fragments. udp2raw filters on protocol + port and checks the rest in code; we let the
kernel drop it all, so foreign traffic never wakes the process.
"""

from __future__ import annotations

import socket
import struct

from sidecar.proto.ipv4 import PROTO_ICMP

# opcodes (linux/filter.h)
_LDB_ABS, _LDH_ABS, _LDW_ABS = 0x30, 0x28, 0x20
_LDB_IND, _LDH_IND = 0x50, 0x48
_LDX_MSH = 0xB1  # X = 4 * (byte[k] & 0xf): the IPv4 header length
_JEQ, _JSET = 0x15, 0x45
_RET = 0x06
_AD_PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_PKTTYPE
PACKET_OUTGOING = 4
_ACCEPT_BYTES = 0xFFFF
_REJECT = -1  # placeholder jump target, resolved to the final "ret 0"
_INSN = struct.Struct("=HBBI")


def _check(load: int, offset: int, value: int) -> list[tuple[int, int, int, int]]:
    """Load a field; go on if it equals `value`, otherwise reject."""
    return [(load, 0, 0, offset), (_JEQ, 0, _REJECT, value)]


def program(proto: int, *, src: str | None = None, dst: str | None = None, sport: int | None = None,
            dport: int | None = None, icmp_type: int | None = None, icmp_id: int | None = None) -> bytes:
    """The packed `struct sock_filter` array for these matches (ports apply to TCP/UDP, type/id to ICMP)."""
    insns = [(_LDB_ABS, 0, 0, _AD_PKTTYPE), (_JEQ, _REJECT, 0, PACKET_OUTGOING)]
    insns += _check(_LDB_ABS, 9, proto)
    for offset, address in ((12, src), (16, dst)):
        if address is not None:
            insns += _check(_LDW_ABS, offset, int.from_bytes(socket.inet_aton(address), "big"))
    insns += [(_LDH_ABS, 0, 0, 6), (_JSET, _REJECT, 0, 0x1FFF), (_LDX_MSH, 0, 0, 0)]
    if proto == PROTO_ICMP:
        fields = ((_LDB_IND, 0, icmp_type), (_LDH_IND, 4, icmp_id))
    else:
        fields = ((_LDH_IND, 0, sport), (_LDH_IND, 2, dport))
    for load, offset, value in fields:
        if value is not None:
            insns += _check(load, offset, value)
    insns += [(_RET, 0, 0, _ACCEPT_BYTES), (_RET, 0, 0, 0)]
    reject = len(insns) - 1
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(insns):
        jt, jf = (reject - i - 1 if j == _REJECT else j for j in (jt, jf))
        out += _INSN.pack(code, jt, jf, k)
    return bytes(out)

