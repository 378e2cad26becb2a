"""Per-packet cost of the udp2raw path in memory (no sockets): a client and a server machine, handshaken.

    python -m bench.u2r_micro [count]

encode = `U2rClient.send` + `take_packets` (safer plaintext, auth, cipher, TCP and IPv4 headers);
decode = `parse_raw` + `U2rServer.receive_raw` + `take_events` of those packets (IPv4/TCP checks, open,
anti-replay, conv lookup). Each figure is the best of five runs, in µs of CPU time per packet (CPU,
not wall time: the figures stay comparable on a box shared with other jobs), faketcp.
"""

from __future__ import annotations

import random
import socket
import sys
import time

from sidecar.proto.l4 import parse_raw
from sidecar.proto.u2r_client import U2rClient
from sidecar.proto.u2r_crypto import BlobCodec, derive_keys
from sidecar.proto.u2r_server import U2rServer
from sidecar.proto.u2r_session import FlowData, U2rOptions

CASES = (("aes128cbc", "md5"), ("aes128cfb", "hmac_sha1"), ("xor", "simple"))
SIZES = (64, 1200)
CLIENT_IP, SERVER_IP, PORT = socket.inet_aton("10.77.0.2"), socket.inet_aton("10.77.0.1"), 4096
APP = ("127.0.0.1", 5555)


def connected(cipher: str, auth: str) -> tuple[U2rClient, U2rServer]:
    """A client and a server that finished the faketcp and udp2raw handshakes."""
    keys, options = derive_keys(b"bench"), U2rOptions()
    server = U2rServer(BlobCodec(cipher, auth, keys), keys, options, SERVER_IP, PORT, rng=random.Random(1))
    client = U2rClient(BlobCodec(cipher, auth, keys), keys, options, CLIENT_IP, SERVER_IP, PORT,
                       rng=random.Random(2))
    client.start(0.0)
    moving = True
    while moving:
        moving = False
        for src, dst in ((client, server), (server, client)):
            src.take_events()
            for packet in src.take_packets():
                dst.receive_raw(parse_raw(packet), 0.0)
                moving = True
    client.send(APP, b"open", 0.0)  # opens the conv and the server's flow
    for packet in client.take_packets():
        server.receive_raw(parse_raw(packet), 0.0)
    server.take_events()
    return client, server


def measure(cipher: str, auth: str, size: int, count: int) -> tuple[float, float]:
    """(encode µs, decode µs) per packet for `count` datagrams of `size` bytes, client to server."""
    payload = bytes(size)
    encode = decode = float("inf")
    for _ in range(5):
        client, server = connected(cipher, auth)
        start = time.process_time()
        for _ in range(count):
            client.send(APP, payload, 1.0)
        packets = client.take_packets()
        encode = min(encode, time.process_time() - start)
        start = time.process_time()
        for packet in packets:
            server.receive_raw(parse_raw(packet), 1.0)
        events = server.take_events()
        decode = min(decode, time.process_time() - start)
        if len(events) != count or not isinstance(events[-1], FlowData) or events[-1].payload != payload:
            raise RuntimeError(f"{cipher}+{auth}: {len(events)} of {count} datagrams arrived intact")
    return encode / count * 1e6, decode / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print("| cipher+auth | bytes | encode µs | decode µs |")
    print("|---|---|---|---|")
    for cipher, auth in CASES:
        for size in SIZES:
            encode, decode = measure(cipher, auth, size, count)
            print(f"| {cipher}+{auth} | {size} | {encode:.1f} | {decode:.1f} |")


if __name__ == "__main__":
    main()
