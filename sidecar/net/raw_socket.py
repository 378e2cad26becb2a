"""The sockets udp2raw's raw modes need (spec udp2raw.md 2.1), all plain non-blocking stdlib sockets
for the hub's watchers: a raw IPv4 sender (we write the whole header), an AF_PACKET receiver with a
BPF filter (it sees packets before netfilter, so the DROP rules hide them from the kernel, not from
us), and the port-reserving socket that keeps the kernel from handing our port to anyone else.
The raw sockets need CAP_NET_RAW; failures are OSError.
"""

from __future__ import annotations

import array
import socket
import struct

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32


def _set_buffer(sock: socket.socket, option: int, forced: int, size: int, force: bool) -> None:
    """SO_SNDBUF/SO_RCVBUF; with `force` (root) past the sysctl cap, as udp2raw's --force-sock-buf."""
    if force:
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
            return
        except PermissionError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, option, size)


def size_buffers(sock: socket.socket, sock_buf: int, force_buf: bool = False) -> None:
    """Both buffers of a UDP socket to `sock_buf`, as udp2raw sizes its UDP sockets too: the default
    (~200 KB, under 100 datagrams of 1.2 KB) overflows whenever the process waits a few ms for a CPU."""
    _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, sock_buf, force_buf)
    _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, sock_buf, force_buf)


def open_sender(sock_buf: int = 1024 * 1024, force_buf: bool = False) -> socket.socket:
    """A raw IPv4 socket for whole packets (IPPROTO_RAW implies IP_HDRINCL): send with `sendto(p, (dst, 0))`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, sock_buf, force_buf)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def attach_filter(sock: socket.socket, prog: bytes) -> None:
    """SO_ATTACH_FILTER a classic BPF program (packed sock_filter array); replaces any earlier one."""
    insns = array.array("B", prog)  # its buffer address is what sock_fprog points at (no ctypes needed)
    fprog = struct.pack("HL", len(prog) // 8, insns.buffer_info()[0])  # struct sock_fprog, native layout
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_receiver(prog: bytes, dev: str | None = None, sock_buf: int = 1024 * 1024,
                  force_buf: bool = False) -> socket.socket:
    """An AF_PACKET/SOCK_DGRAM socket that reads IPv4 packets (no L2 header) passing `prog`.

    Packets queued between socket() and the filter taking effect are drained, so nothing unfiltered
    ever reaches the caller.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    try:
        _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, sock_buf, force_buf)
        attach_filter(sock, prog)
        if dev:
            sock.bind((dev, ETH_P_IP))
        sock.setblocking(False)
        _drain(sock)
    except OSError:
        sock.close()
        raise
    return sock


def _drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return


def reserve_port(raw_mode: str, ip: str, port: int, *, listen: bool = True) -> socket.socket:
    """Hold `port` the way udp2raw does: faketcp a bound (listening) TCP socket, udp/icmp a bound UDP one.

    easy-faketcp clients pass listen=False and `connect_ex` the socket themselves.
    """
    tcp = raw_mode in ("faketcp", "easy-faketcp")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        if tcp:  # lets a new attempt rebind the port it just closed; a UDP hold stays exclusive
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        if tcp and listen:
            sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def route_source(dst: str) -> str:
    """The source address the routing table picks to reach `dst` (udp2raw's default for -c)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((dst, 9))  # a UDP connect sends nothing, it only resolves the route
        return probe.getsockname()[0]
