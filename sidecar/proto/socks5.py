"""SOCKS5 server side (RFC 1928, RFC 1929 user/password) as a sans-I/O handshake, plus UDP datagrams."""

from dataclasses import dataclass
from enum import IntEnum

from sidecar.errors import ProtocolError
from sidecar.proto.socks_addr import UnsupportedAddressType, encode_addr, parse_addr

VERSION = 5
NO_AUTH, USER_PASS, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CMD_CONNECT, CMD_BIND, CMD_UDP_ASSOCIATE = 1, 2, 3


class Reply(IntEnum):
    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class Socks5Refusal(ProtocolError):
    """The handshake cannot go on: send `reply` to the client, then close."""

    def __init__(self, message: str, reply: bytes) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Request:
    command: int
    host: str
    port: int


def build_reply(code: Reply, host: str = "0.0.0.0", port: int = 0) -> bytes:
    return bytes((VERSION, code, 0)) + encode_addr(host, port)


class Socks5Handshake:
    """Feed client bytes; send back what `feed` returns; `request` is set once the request is read.

    With `users`, the client must authenticate with one of those username/password pairs.
    """

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self._users = users
        self._buf = bytearray()
        self._step = self._greeting
        self.request: Request | None = None
        self.username: str | None = None

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = b""
        while self.request is None:
            try:
                reply = self._step()
            except Socks5Refusal as exc:
                exc.reply = out + exc.reply  # answers owed to earlier steps of a pipelined handshake
                raise
            if reply is None:
                break
            out += reply
        return out

    @property
    def leftover(self) -> bytes:
        """Bytes the client sent after its request (early data for CONNECT)."""
        return bytes(self._buf)

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        return chunk

    def _greeting(self) -> bytes | None:
        if len(self._buf) < 2:
            return None
        if self._buf[0] != VERSION:
            raise ProtocolError(f"not SOCKS5 (version byte {self._buf[0]})")
        if len(self._buf) < 2 + self._buf[1]:
            return None
        methods = self._take(2 + self._buf[1])[2:]
        wanted = USER_PASS if self._users is not None else NO_AUTH
        if wanted not in methods:
            raise Socks5Refusal("no acceptable authentication method", bytes((VERSION, NO_ACCEPTABLE)))
        self._step = self._user_pass if wanted == USER_PASS else self._request
        return bytes((VERSION, wanted))

    def _user_pass(self) -> bytes | None:
        buf = self._buf
        if len(buf) < 2 or len(buf) < 3 + buf[1] or len(buf) < 3 + buf[1] + buf[2 + buf[1]]:
            return None
        if buf[0] != 1:
            raise ProtocolError(f"bad user/password sub-negotiation version {buf[0]}")
        ulen = buf[1]
        raw = self._take(3 + ulen + buf[2 + ulen])
        user = raw[2 : 2 + ulen].decode("utf-8", "replace")
        password = raw[3 + ulen :].decode("utf-8", "replace")
        if (self._users or {}).get(user) != password:
            raise Socks5Refusal(f"bad credentials for user {user!r}", b"\x01\x01")
        self.username = user
        self._step = self._request
        return b"\x01\x00"

    def _request(self) -> bytes | None:
        if len(self._buf) < 4:
            return None
        if self._buf[0] != VERSION:
            raise ProtocolError(f"bad request version {self._buf[0]}")
        command = self._buf[1]
        try:
            parsed = parse_addr(self._buf, 3)
        except UnsupportedAddressType as exc:
            raise Socks5Refusal(str(exc), build_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)) from None
        if parsed is None:
            return None
        host, port, end = parsed
        del self._buf[:end]
        if command not in (CMD_CONNECT, CMD_UDP_ASSOCIATE):
            raise Socks5Refusal(f"command {command} not supported", build_reply(Reply.COMMAND_NOT_SUPPORTED))
        self.request = Request(command, host, port)
        return b""


class FragmentedDatagram(ProtocolError):
    """A SOCKS5 UDP datagram with FRAG != 0, which we drop (fragmentation is optional in RFC 1928)."""


def split_udp_datagram(data: bytes | memoryview) -> memoryview:
    """The `ATYP ADDR PORT DATA` part of a client datagram `RSV RSV FRAG ATYP ADDR PORT DATA`."""
    if len(data) < 4:
        raise ProtocolError("SOCKS5 UDP datagram too short")
    if data[2] != 0:
        raise FragmentedDatagram(f"fragment number {data[2]}")
    view = memoryview(data)[3:]
    if parse_addr(view) is None:
        raise ProtocolError("SOCKS5 UDP datagram address truncated")
    return view


UDP_HEADER_PREFIX = b"\x00\x00\x00"
