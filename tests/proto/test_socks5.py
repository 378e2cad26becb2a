"""SOCKS5 handshake core: methods, user/password, requests, reply codes, UDP datagrams."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ProtocolError
from sidecar.proto.socks5 import (
    CMD_CONNECT,
    CMD_UDP_ASSOCIATE,
    FragmentedDatagram,
    Reply,
    Socks5Handshake,
    Socks5Refusal,
    build_reply,
    split_udp_datagram,
)
from sidecar.proto.socks_addr import encode_addr, parse_addr


@pytest.mark.parametrize("host", ["10.1.2.3", "::1", "example.com"])
def test_addr_round_trip(host):
    encoded = encode_addr(host, 443)
    assert parse_addr(encoded) == (host, 443, len(encoded))
    for cut in range(len(encoded)):
        assert parse_addr(encoded[:cut]) is None


def test_connect_no_auth_byte_by_byte_with_early_data():
    shake = Socks5Handshake()
    wire = b"\x05\x01\x00" + b"\x05\x01\x00" + encode_addr("example.com", 80) + b"GET /"
    out = b"".join(shake.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert out == b"\x05\x00"
    assert shake.request.command == CMD_CONNECT
    assert (shake.request.host, shake.request.port) == ("example.com", 80)
    assert shake.leftover == b"GET /"


def test_user_password():
    shake = Socks5Handshake({"alice": "pw"})
    assert shake.feed(b"\x05\x02\x00\x02") == b"\x05\x02"
    assert shake.feed(b"\x01\x05alice\x02pw") == b"\x01\x00"
    assert shake.feed(b"\x05\x03\x00" + encode_addr("0.0.0.0", 0)) == b""
    assert shake.request.command == CMD_UDP_ASSOCIATE and shake.username == "alice"


def test_bad_password_and_missing_method_are_refused():
    shake = Socks5Handshake({"alice": "pw"})
    shake.feed(b"\x05\x01\x02")
    with pytest.raises(Socks5Refusal) as info:
        shake.feed(b"\x01\x05alice\x03bad")
    assert info.value.reply == b"\x01\x01"
    with pytest.raises(Socks5Refusal) as info:
        Socks5Handshake({"a": "b"}).feed(b"\x05\x01\x00")
    assert info.value.reply == b"\x05\xff"


@pytest.mark.parametrize(("request_bytes", "code"), [
    (b"\x05\x02\x00" + encode_addr("1.2.3.4", 1), Reply.COMMAND_NOT_SUPPORTED),  # BIND
    (b"\x05\x09\x00" + encode_addr("1.2.3.4", 1), Reply.COMMAND_NOT_SUPPORTED),
    (b"\x05\x01\x00\x07\x00\x00", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
])
def test_refused_requests_carry_the_reply_code(request_bytes, code):
    shake = Socks5Handshake()
    shake.feed(b"\x05\x01\x00")
    with pytest.raises(Socks5Refusal) as info:
        shake.feed(request_bytes)
    assert info.value.reply[1] == code


def test_reply_layout():
    assert build_reply(Reply.CONNECTION_REFUSED) == b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00"
    assert build_reply(Reply.SUCCEEDED, "::1", 1080)[3] == 4


def test_udp_datagram():
    body = encode_addr("8.8.8.8", 53) + b"query"
    assert bytes(split_udp_datagram(b"\x00\x00\x00" + body)) == body
    with pytest.raises(FragmentedDatagram):
        split_udp_datagram(b"\x00\x00\x01" + body)
    with pytest.raises(ProtocolError):
        split_udp_datagram(b"\x00\x00\x00\x01\x01")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_raises_only_protocol_errors(data):
    try:
        Socks5Handshake({"u": "p"}).feed(data)
        Socks5Handshake().feed(data)
    except ProtocolError:
        pass


def test_pipelined_refusal_keeps_the_earlier_answers():
    shake = Socks5Handshake({"alice": "pw"})
    with pytest.raises(Socks5Refusal) as info:
        shake.feed(b"\x05\x01\x02" + b"\x01\x05alice\x03bad")
    assert info.value.reply == b"\x05\x02\x01\x01"
