"""A minimal udp2raw client or server process built from the state machines and the endpoint drivers,
for the namespace tests (no config or role wiring): `python -m tests.e2e.u2r_peer client|server ...`.

Logs to stdout; on SIGTERM/SIGINT it stops the endpoint (which removes its firewall rule), prints its
counters and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

import gevent
from gevent.event import Event

from sidecar.net.firewall import Firewall, Pattern
from sidecar.net.raw_socket import route_source
from sidecar.net.u2r_endpoint import U2rClientEndpoint, U2rServerEndpoint
from sidecar.proto.u2r_client import U2rClient
from sidecar.proto.u2r_crypto import BlobCodec, derive_keys
from sidecar.proto.u2r_server import U2rServer
from sidecar.proto.u2r_session import U2rOptions


def endpoint(args: argparse.Namespace, log: logging.Logger) -> U2rClientEndpoint | U2rServerEndpoint:
    keys = derive_keys(args.key.encode())
    codec = BlobCodec(args.cipher, args.auth, keys)
    options = U2rOptions(raw_mode=args.mode)
    host, port = args.raw.rsplit(":", 1)
    if args.side == "client":
        local_ip = args.local_ip or route_source(host)
        machine = U2rClient(codec, keys, options, socket.inet_aton(local_ip), socket.inet_aton(host), int(port))
        pattern = Pattern("client", options.raw_mode, host, int(port))
        firewall = Firewall(pattern, machine.const_id, args.rules) if args.rules != "none" else None
        lhost, lport = args.udp.rsplit(":", 1)
        return U2rClientEndpoint(machine, (lhost, int(lport)), log, firewall=firewall)
    server = U2rServer(codec, keys, options, socket.inet_aton(host), int(port))
    firewall = Firewall(Pattern("server", options.raw_mode, host, int(port)), server.const_id,
                        args.rules) if args.rules != "none" else None
    thost, tport = args.udp.rsplit(":", 1)
    return U2rServerEndpoint(server, (host, int(port)), (thost, int(tport)), log, firewall=firewall)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=["client", "server"])
    parser.add_argument("--raw", required=True, help="server raw address ip:port")
    parser.add_argument("--udp", required=True, help="client: local UDP listen; server: UDP target")
    parser.add_argument("--local-ip", default=None, help="client source IP (default: the route's)")
    parser.add_argument("--mode", default="faketcp")
    parser.add_argument("--cipher", default="aes128cbc")
    parser.add_argument("--auth", default="md5")
    parser.add_argument("--key", default="e2e-key")
    parser.add_argument("--rules", default=None, help="nft | iptables | none (default: detect)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    log = logging.getLogger(f"u2r-{args.side}")
    peer = endpoint(args, log)
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    peer.start()
    log.info("started")
    stop.wait()
    peer.stop()
    machine = peer.client if isinstance(peer, U2rClientEndpoint) else peer.server
    log.info("counters: %s %s", machine.counters.line(), peer.counters.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
