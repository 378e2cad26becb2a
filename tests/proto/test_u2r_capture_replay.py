"""The real udp2raw server's captured packets, replayed into our client machine (and its client's into
our server): the state machines must take the real peer's handshake, heartbeats and data, and answer
with the headers the real peer expects. Vectors: ../shared/vectors/udp2raw (see test_u2r_vectors)."""

from __future__ import annotations

import random
import socket

import pytest

from sidecar.proto.l4 import TcpSegment, parse_raw
from sidecar.proto.u2r_client import U2rClient
from sidecar.proto.u2r_crypto import BlobCodec, Direction
from sidecar.proto.u2r_frame import Bare, parse_packet
from sidecar.proto.u2r_handshake import ClientState
from sidecar.proto.u2r_server import U2rServer
from sidecar.proto.u2r_session import Deliver, U2rOptions
from tests.proto.test_u2r_vectors import Capture, ids, load

REPLAYED = ["faketcp_aes128cbc_md5", "faketcp_aes128cfb_hmac_sha1", "faketcp_none_none", "udp_xor_simple",
            "udp_aes128cbc_md5", "icmp_aes128cbc_crc32"]
APP = ("127.0.0.1", 5555)


def client_for(cap: Capture) -> U2rClient:
    meta, sid = cap.meta, ids(cap.meta)
    return U2rClient(BlobCodec(meta["cipher_mode"], meta["auth_mode"], cap.keys), cap.keys,
                     U2rOptions(raw_mode=meta["raw_mode"]), socket.inet_aton(meta["client"]["ip"]),
                     socket.inet_aton(meta["server"]["ip"]), meta["server"]["port"],
                     source_port=meta["client"]["raw_port_or_icmp_id"], const_id=sid["client_const_id"],
                     rng=random.Random(1))


@pytest.mark.parametrize("name", REPLAYED)
def test_our_client_takes_the_real_servers_packets(name: str) -> None:
    cap = load(name)
    sid, meta = ids(cap.meta), cap.meta
    client = client_for(cap)
    client.start(0.0)
    client.my_id = sid["client_my_id"]  # as if our random draw had been the captured one
    if meta["raw_mode"] == "faketcp":
        client.path.isn = next(p["tcp"]["seq"] for p in meta["packets"] if p["kind"] == "tcp_syn")
    client.convs.add(sid["conv"], APP, 0.0)
    client.take_packets()
    ours, delivered = {}, []
    for info, packet in cap.packets():
        if info["direction"] == "s2c":
            client.receive_raw(parse_raw(packet), info["time_offset_s"])
            delivered += [e.payload for e in client.take_events() if isinstance(e, Deliver)]
            for sent in client.take_packets():
                ours.setdefault(info["kind"], parse_raw(sent))
    assert client.state is ClientState.READY and client.counters["rejected"] == 0
    assert client.peer_id == sid["server_my_id"]
    assert delivered == [bytes.fromhex(p["hex"]) for p in meta["app_payloads"] if p["direction"] == "s2c"]
    hs2 = parse_packet(cap.codec.open(ours["reply"].payload, Direction.C2S))
    assert isinstance(hs2, Bare) and (hs2.id1, hs2.id2, hs2.id3) == (
        sid["client_my_id"], sid["server_my_id"], sid["client_const_id"])
    if meta["raw_mode"] == "faketcp":  # our handshake2 sits exactly where the real client's did
        theirs = next(p["tcp"] for p in meta["packets"] if p["kind"] == "handshake2")
        assert (ours["reply"].l4.seq, ours["reply"].l4.ack) == (theirs["seq"], theirs["ack"])


@pytest.mark.parametrize("name", ["faketcp_aes128cbc_md5", "icmp_aes128cbc_crc32"])
def test_our_server_answers_the_real_clients_handshake1_where_udp2raw_did(name: str) -> None:
    cap = load(name)
    meta, sid = cap.meta, ids(cap.meta)
    server = U2rServer(BlobCodec(meta["cipher_mode"], meta["auth_mode"], cap.keys), cap.keys,
                       U2rOptions(raw_mode=meta["raw_mode"]), socket.inet_aton(meta["server"]["ip"]),
                       meta["server"]["port"], rng=random.Random(1))
    kinds = {}
    for info, packet in cap.packets():
        if info["direction"] == "c2s" and info["kind"] in ("tcp_syn", "handshake1"):
            server.receive_raw(parse_raw(packet), info["time_offset_s"])
            kinds[info["kind"]] = parse_raw(server.take_packets()[-1])
    reply = kinds["handshake1"]
    bare = parse_packet(cap.codec.open(reply.payload, Direction.S2C))
    assert isinstance(bare, Bare) and bare.id2 == sid["client_my_id"] and bare.id3 == server.const_id
    theirs = next(p for p in meta["packets"] if p["kind"] == "reply")
    if isinstance(reply.l4, TcpSegment):
        assert (reply.l4.seq, reply.l4.ack) == (theirs["tcp"]["seq"], theirs["tcp"]["ack"])
        assert kinds["tcp_syn"].l4.ack == next(p["tcp"]["seq"] for p in meta["packets"] if p["kind"] == "tcp_syn") + 1
    else:
        assert (reply.l4.type, reply.l4.ident, reply.l4.seq) == (0, theirs["icmp"]["id"], theirs["icmp"]["seq"])
