"""udp2raw codecs against captures of the real tool (../shared/vectors/udp2raw, see its README).

Every packet of every capture is decoded (IP/L4 headers, blob, plaintext layout) to the values the
JSON records, re-encoded to the captured bytes, and tampered with to check it is then rejected.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import AuthError, ProtocolError
from sidecar.proto.ipv4 import build_ipv4
from sidecar.proto.l4 import (
    TCP_ACK,
    TCP_SYN,
    IcmpHeader,
    TcpSegment,
    UdpHeader,
    build_icmp_echo,
    build_tcp,
    build_udp,
    parse_raw,
)
from sidecar.proto.u2r_crypto import BlobCodec, Direction, Keys, derive_keys, effective_key
from sidecar.proto.u2r_frame import (
    Bare,
    ReplayWindow,
    Safer,
    build_bare,
    build_data,
    build_heartbeat,
    parse_packet,
)
from tests.helpers import require

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "udp2raw"
CAPTURES = [
    "faketcp_aes128cbc_md5",
    "faketcp_aes128cfb_hmac_sha1",
    "udp_xor_simple",
    "icmp_aes128cbc_crc32",
    "faketcp_none_none",
    "udp_aes128cbc_md5",
    "faketcp_aes128cbc_md5_spaced_key",
]

require(VECTORS.is_dir(), f"udp2raw capture vectors not found at {VECTORS}", module=True)

LINKTYPE_RAW = 101


def read_pcap(path: Path) -> tuple[int, list[bytes]]:
    """(linktype, packets) of a classic pcap file, either byte order, micro- or nanosecond stamps."""
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path.name}: not a classic pcap file")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    record = struct.Struct(endian + "IIII")
    packets, pos = [], 24
    while pos < len(data):
        _sec, _frac, incl_len, _orig_len = record.unpack_from(data, pos)
        pos += record.size
        if pos + incl_len > len(data):
            raise ValueError(f"{path.name}: truncated record at offset {pos}")
        packets.append(data[pos : pos + incl_len])
        pos += incl_len
    return linktype, packets


class Capture:
    def __init__(self, name: str) -> None:
        self.name = name
        self.meta: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
        self.linktype, self.raw = read_pcap(VECTORS / f"{name}.pcap")
        self.keys = keys_for(self.meta["effective_key"].encode())
        self.codec = BlobCodec(self.meta["cipher_mode"], self.meta["auth_mode"], self.keys)

    def packets(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        yield from zip(self.meta["packets"], self.raw, strict=True)

    def blobs(self) -> Iterator[tuple[dict[str, Any], bytes, Direction]]:
        for pkt in self.meta["packets"]:
            if "blob_hex" in pkt:
                yield pkt, bytes.fromhex(pkt["blob_hex"]), Direction(pkt["direction"])

    @property
    def authenticated(self) -> bool:
        return self.meta["auth_mode"] != "none"


@functools.cache
def keys_for(password: bytes) -> Keys:
    return derive_keys(password)


@functools.cache
def load(name: str) -> Capture:
    return Capture(name)


@pytest.fixture(params=CAPTURES)
def cap(request: pytest.FixtureRequest) -> Capture:
    return load(request.param)


def ids(meta: dict[str, Any]) -> dict[str, int]:
    return {k: int(v, 16) for k, v in meta["session_ids"].items() if k != "client_raw_port"}


def hexint(value: str) -> int:
    return int(value, 16)


# --- the capture files themselves -----------------------------------------------------------------


def test_pcap_is_the_one_the_json_describes(cap: Capture) -> None:
    pcap = cap.meta["pcap"]
    assert hashlib.sha256((VECTORS / pcap["file"]).read_bytes()).hexdigest() == pcap["sha256"]
    assert cap.linktype == LINKTYPE_RAW == pcap["linktype"]
    assert len(cap.raw) == pcap["packets"] == len(cap.meta["packets"])
    assert cap.meta["decoder_problems"] == []


# --- keys (spec 3) ----------------------------------------------------------------------------------


def test_key_derivation(cap: Capture) -> None:
    assert effective_key(cap.meta["key_argument"]) == cap.meta["effective_key"].encode()
    expected = cap.meta["derived_keys"]
    assert cap.keys.normal.hex() == expected["normal_key_hex"]
    assert cap.keys.cipher_c2s.hex() == expected["cipher_key_c2s_hex"]
    assert cap.keys.cipher_s2c.hex() == expected["cipher_key_s2c_hex"]
    assert cap.keys.hmac_c2s.hex() == expected["hmac_key_c2s_hex"]
    assert cap.keys.hmac_s2c.hex() == expected["hmac_key_s2c_hex"]
    assert cap.keys.gro.hex() == expected["gro_hex"]


def test_spaced_key_quirk() -> None:
    cap = load("faketcp_aes128cbc_md5_spaced_key")
    assert cap.meta["key_argument"] == "test vector key"
    assert effective_key(cap.meta["key_argument"]) == b"test"
    full = BlobCodec(cap.meta["cipher_mode"], cap.meta["auth_mode"], keys_for(b"test vector key"))
    for pkt, blob, direction in cap.blobs():
        with pytest.raises(AuthError):
            full.open(blob, direction)
        assert cap.codec.open(blob, direction).hex() == pkt["decoded"]["plaintext_hex"]


# --- IP and L4 headers (spec 2) -------------------------------------------------------------------


def test_headers_decode(cap: Capture) -> None:
    for pkt, raw in cap.packets():
        where = f"{cap.name}#{pkt['index']}"
        got = parse_raw(raw)  # raises on a bad IP/UDP/ICMP checksum
        rec = pkt["ip"]
        assert rec["checksum_ok"], where
        assert got.ip.src == socket.inet_aton(rec["src"]) and got.ip.dst == socket.inet_aton(rec["dst"]), (
            where
        )
        assert (got.ip.ident, got.ip.ttl, got.ip.df, got.ip.tos, got.ip.proto) == (
            rec["id"],
            rec["ttl"],
            rec["df"],
            rec["tos"],
            rec["proto"],
        ), where
        assert got.ip.total_length == rec["total_length"] == pkt["ip_len"] == len(raw), where
        assert bytes(got.payload) == bytes.fromhex(pkt.get("blob_hex", "")), where
        if "tcp" in pkt:
            check_tcp(got.l4, pkt["tcp"], raw, where)
        elif "udp" in pkt:
            assert isinstance(got.l4, UdpHeader) and pkt["udp"]["checksum_ok"], where
            assert (got.l4.sport, got.l4.dport) == (pkt["udp"]["sport"], pkt["udp"]["dport"]), where
            assert pkt["udp"]["length"] == 8 + len(got.payload), where
        else:
            rec = pkt["icmp"]
            assert isinstance(got.l4, IcmpHeader) and rec["checksum_ok"], where
            assert tuple(got.l4) == (rec["type"], rec["code"], rec["id"], rec["seq"]), where


def check_tcp(seg: object, rec: dict[str, Any], raw: bytes, where: str) -> None:
    assert isinstance(seg, TcpSegment), where
    assert seg.checksum_ok and rec["checksum_ok"], where
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window) == (
        rec["sport"],
        rec["dport"],
        rec["seq"],
        rec["ack"],
        rec["flags"],
        rec["window"],
    ), where
    assert (seg.tsval, seg.tsecr, seg.header_len) == (rec["tsval"], rec["tsecr"], rec["data_offset"]), where
    assert raw[40 : 20 + seg.header_len].hex() == rec["options_hex"], where


def test_headers_encode_byte_exact(cap: Capture) -> None:
    """Rebuild every packet from the recorded fields and blob: IP id, options and checksums included."""
    for pkt, raw in cap.packets():
        rec, blob = pkt["ip"], bytes.fromhex(pkt.get("blob_hex", ""))
        src, dst = socket.inet_aton(rec["src"]), socket.inet_aton(rec["dst"])
        if "tcp" in pkt:
            t = pkt["tcp"]
            l4 = build_tcp(
                src,
                dst,
                sport=t["sport"],
                dport=t["dport"],
                seq=t["seq"],
                ack=t["ack"],
                flags=t["flags"],
                window=t["window"],
                tsval=t["tsval"],
                tsecr=t["tsecr"],
                payload=blob,
            )
        elif "udp" in pkt:
            l4 = build_udp(src, dst, pkt["udp"]["sport"], pkt["udp"]["dport"], blob)
        else:
            l4 = build_icmp_echo(pkt["icmp"]["type"], pkt["icmp"]["id"], pkt["icmp"]["seq"], blob)
        header = build_ipv4(src, dst, rec["proto"], len(l4), rec["id"], ttl=rec["ttl"], df=rec["df"])
        assert header + l4 == raw, f"{cap.name}#{pkt['index']}"


def test_header_corruption_rejected(cap: Capture) -> None:
    """IP, UDP and ICMP checksums are enforced; a bad TCP checksum is reported, not raised (spec 2.1)."""
    for pkt, raw in cap.packets():
        bad_ip = bytearray(raw)
        bad_ip[8] ^= 0x01  # TTL
        with pytest.raises(ProtocolError):
            parse_raw(bad_ip)
        bad_l4 = bytearray(raw)
        bad_l4[-1] ^= 0x80  # last payload (or option) byte
        if "tcp" in pkt:
            seg = parse_raw(bad_l4).l4
            assert isinstance(seg, TcpSegment) and not seg.checksum_ok
        else:
            with pytest.raises(ProtocolError):
                parse_raw(bad_l4)


# --- blobs (spec 4) -------------------------------------------------------------------------------


def test_blob_decrypt(cap: Capture) -> None:
    tagger = (
        BlobCodec("none", cap.meta["auth_mode"], cap.keys) if cap.meta["auth_mode"] != "hmac_sha1" else None
    )
    for pkt, blob, direction in cap.blobs():
        dec = pkt["decoded"]
        plaintext = cap.codec.open(blob, direction)
        assert plaintext.hex() == dec["plaintext_hex"] and len(plaintext) == dec["plaintext_len"]
        tag = bytes.fromhex(dec["tag_hex"])
        if tagger is None:
            assert blob[-20:] == tag
        else:
            assert tagger.seal(plaintext, direction) == plaintext + tag


def test_blob_encrypt_byte_exact(cap: Capture) -> None:
    """Deterministic modes reproduce the blob; aes128cbc does too when given the captured pad bytes."""
    for pkt, blob, direction in cap.blobs():
        plaintext = bytes.fromhex(pkt["decoded"]["plaintext_hex"])
        pad = pkt["decoded"].get("cbc_pad_hex")
        assert cap.codec.seal(plaintext, direction, bytes.fromhex(pad) if pad else None) == blob
        ours = cap.codec.seal(plaintext, direction)  # our own (zero) pad bytes
        assert cap.codec.open(ours, direction) == plaintext
        assert len(ours) == len(blob) and ours[:-32] == blob[:-32]


def test_blob_tampering_rejected(cap: Capture) -> None:
    """Flipped bits, truncation, a wrong key and (where keys are directional) the wrong direction.

    auth none has nothing to check: there only the frame ids catch tampering (test_none_none_tamper).
    """
    if not cap.authenticated:
        blob, direction = next(cap.blobs())[1:]
        assert cap.codec.open(blob[:-1], direction) == blob[:-1]
        return
    other_keys = keys_for(b"not-the-key")
    wrong = BlobCodec(cap.meta["cipher_mode"], cap.meta["auth_mode"], other_keys)
    directional = cap.meta["auth_mode"] == "hmac_sha1" or cap.meta["cipher_mode"] == "aes128cfb"
    for _pkt, blob, direction in cap.blobs():
        for pos in {0, 16, len(blob) // 2, len(blob) - 1}:
            flipped = bytearray(blob)
            flipped[pos] ^= 0x04
            with pytest.raises(AuthError):
                cap.codec.open(flipped, direction)
        for short in (blob[:0], blob[:1], blob[:15], blob[:-1]):
            with pytest.raises(AuthError):
                cap.codec.open(short, direction)
        with pytest.raises(AuthError):
            wrong.open(blob, direction)
        if directional:  # the other direction's HKDF keys must not open it either
            reverse = Direction.S2C if direction is Direction.C2S else Direction.C2S
            with pytest.raises(AuthError):
                cap.codec.open(blob, reverse)


def test_none_none_tamper() -> None:
    cap = load("faketcp_none_none")
    sess = ids(cap.meta)
    for _pkt, blob, direction in cap.blobs():
        flipped = bytearray(blob)
        flipped[20] ^= 0x01  # last byte of id1 (bare), of the conv or the filler (safer)
        opened = parse_or_none(cap.codec.open(flipped, direction))
        good = parse_packet(cap.codec.open(blob, direction))
        assert opened != good
        if isinstance(good, Safer):
            flipped = bytearray(blob)
            flipped[0] ^= 0x01
            bad = parse_packet(cap.codec.open(flipped, direction))
            assert isinstance(bad, Safer) and (bad.my_id, bad.opp_id) != expected_pair(sess, direction)


def parse_or_none(plaintext: bytes) -> Bare | Safer | None:
    try:
        return parse_packet(plaintext)
    except ProtocolError:
        return None


def expected_pair(sess: dict[str, int], direction: Direction) -> tuple[int, int]:
    client, server = sess["client_my_id"], sess["server_my_id"]
    return (client, server) if direction is Direction.C2S else (server, client)


# --- plaintext layouts (spec 5, 6.1) --------------------------------------------------------------


def test_frames_decode(cap: Capture) -> None:
    sess = ids(cap.meta)
    for pkt, blob, direction in cap.blobs():
        dec, where = pkt["decoded"], f"{cap.name}#{pkt['index']}"
        got = parse_packet(cap.codec.open(blob, direction))
        if dec["layout"] == "bare":
            assert isinstance(got, Bare), where
            assert (got.id1, got.id2, got.id3) == (hexint(dec["id1"]), hexint(dec["id2"]), hexint(dec["id3"]))
            assert (got.iv.hex(), got.pad.hex()) == (dec["iv_hex"], dec["pad_hex"]), where
        else:
            assert isinstance(got, Safer), where
            assert (got.my_id, got.opp_id) == (hexint(dec["my_id"]), hexint(dec["opp_id"])), where
            assert (got.my_id, got.opp_id) == expected_pair(sess, direction), where
            assert (got.seq, got.type, got.roller) == (dec["seq"], dec["type"], dec["roller"]), where
            assert got.roller == dec["peer_heartbeats_seen_in_capture_before_this"] % 256, where  # spec 6.2
            if got.type == "d":
                assert got.conv == hexint(dec["conv"]) == sess["conv"], where
                assert bytes(got.payload).hex() == dec["app_payload_hex"], where
                assert len(got.payload) + 4 == dec["body_len"], where
            else:
                assert got.conv is None and bytes(got.payload) == bytes(cap.meta["hb_len"]), where
        assert classify(got, direction, sess) == pkt["kind"], where


def classify(pkt: Bare | Safer, direction: Direction, sess: dict[str, int]) -> str:
    """What a handshake state machine concludes from the ids alone (vectors README, step 4)."""
    if isinstance(pkt, Safer):
        return "heartbeat" if pkt.type == "h" else "data"
    if direction is Direction.S2C:
        assert pkt.id2 == sess["client_my_id"] and pkt.id3 == sess["server_const_id"]
        return "reply"
    assert pkt.id1 == sess["client_my_id"] and pkt.id3 == sess["client_const_id"]
    if pkt.id2 == 0:
        return "handshake1"
    assert pkt.id2 == sess["server_my_id"]
    return "handshake2"


def test_frames_encode_byte_exact(cap: Capture) -> None:
    for pkt, _blob, _direction in cap.blobs():
        dec = pkt["decoded"]
        if dec["layout"] == "bare":
            nonce = bytes.fromhex(dec["iv_hex"] + dec["pad_hex"])
            built = build_bare(hexint(dec["id1"]), hexint(dec["id2"]), hexint(dec["id3"]), nonce)
        elif dec["type"] == "h":
            head = (hexint(dec["my_id"]), hexint(dec["opp_id"]), dec["seq"], dec["roller"])
            built = build_heartbeat(*head, hb_len=cap.meta["hb_len"])
        else:
            head = (hexint(dec["my_id"]), hexint(dec["opp_id"]), dec["seq"], dec["roller"])
            built = build_data(*head, hexint(dec["conv"]), bytes.fromhex(dec["app_payload_hex"]))
        assert built.hex() == dec["plaintext_hex"], f"{cap.name}#{pkt['index']}"


def test_tcp_handshake_kinds(cap: Capture) -> None:
    for pkt, raw in cap.packets():
        got = parse_raw(raw)
        if not isinstance(got.l4, TcpSegment) or got.payload:
            continue
        kind = {TCP_SYN: "tcp_syn", TCP_SYN | TCP_ACK: "tcp_syn_ack", TCP_ACK: "tcp_bare_ack"}[got.l4.flags]
        assert kind == pkt["kind"]


# --- the whole receive path, with anti-replay (spec 6.3) ------------------------------------------


def receive(cap: Capture, raw: bytes, windows: dict[Direction, ReplayWindow]) -> str | None:
    """A minimal receive path: raw packet -> blob -> plaintext -> ids -> anti-replay; the kind or None."""
    got = parse_raw(raw)
    if not got.payload:
        return None
    direction = Direction.C2S if got.ip.src == socket.inet_aton(cap.meta["client"]["ip"]) else Direction.S2C
    pkt = parse_packet(cap.codec.open(got.payload, direction))
    if isinstance(pkt, Bare):
        return "bare"  # no anti-replay on handshakes
    if (pkt.my_id, pkt.opp_id) != expected_pair(ids(cap.meta), direction):
        raise AuthError("unexpected ids")
    if not windows[direction].accept(pkt.seq):
        raise AuthError("replayed")
    return pkt.type


def test_replay_whole_capture(cap: Capture) -> None:
    windows = {d: ReplayWindow() for d in Direction}
    kinds = [receive(cap, raw, windows) for raw in cap.raw]
    assert kinds.count("h") + kinds.count("d") == sum(
        1 for p in cap.meta["packets"] if "seq" in p.get("decoded", {})
    )
    for raw, kind in zip(cap.raw, kinds, strict=True):
        if kind in ("h", "d"):
            with pytest.raises(AuthError, match="replayed"):
                receive(cap, raw, windows)
    for direction in Direction:  # a reset window (conn became ready again) accepts them anew
        windows[direction].reset()
    assert [receive(cap, raw, windows) for raw in cap.raw] == kinds


def test_replay_out_of_order(cap: Capture) -> None:
    """Reordered delivery inside the window is accepted once per packet."""
    windows = {d: ReplayWindow() for d in Direction}
    safer = [
        raw for raw in cap.raw if receive(cap, raw, {d: ReplayWindow() for d in Direction}) in ("h", "d")
    ]
    for raw in reversed(safer):
        receive(cap, raw, windows)
    for raw in safer:
        with pytest.raises(AuthError, match="replayed"):
            receive(cap, raw, windows)
