"""The [[u2r-client]] and [[u2r-server]] tables: udp2raw's options, with udp2raw's names and defaults
(`-l` is `listen`, `-r` is `remote`, `--raw-mode` is `raw_mode`, and so on)."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar.config_reader import Section
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from sidecar.config import Endpoint

RAW_MODES = ("faketcp", "easy-faketcp", "udp", "icmp")  # sidecar.proto.u2r_raw's, without importing it
CIPHER_MODES = ("aes128cbc", "aes128cfb", "aes128cfb_0", "xor", "none")
AUTH_MODES = ("md5", "hmac_sha1", "crc32", "simple", "none")
FIREWALLS = ("auto", "nft", "iptables")


@dataclass(frozen=True)
class U2rConfig:
    role: str
    path: str
    name: str
    listen: "Endpoint | None"  # a client without one carries only stages of this process
    remote: "Endpoint | None"  # a server without one hands its flows to stages of this process
    key: str
    raw_mode: str
    cipher_mode: str
    auth_mode: str
    auto_rule: bool
    keep_rule: bool
    firewall: str
    source_ip: str | None
    source_port: int | None
    seq_mode: int
    hb_mode: int
    hb_len: int
    anti_replay: bool
    fix_gro: bool
    mtu_warn: int
    sock_buf: int
    dev: str | None

    @property
    def tcp(self) -> bool:
        return False

    @property
    def udp(self) -> bool:
        return self.role == "u2r-client"  # the server's "listen" is a raw port, not a UDP socket

    @property
    def listen_key(self) -> str:
        return "listen"

    @property
    def weak_auth(self) -> bool:
        return self.auth_mode != "hmac_sha1"


def u2r_role(section: Section, index: int, role: str) -> U2rConfig:
    from sidecar.config import _target  # config imports this module for its builders

    optional = "remote" if role == "u2r-server" else "listen"  # in-process stages may take its place
    listen = _target(section, "listen") if section.has("listen") or optional != "listen" else None
    remote = _target(section, "remote") if section.has("remote") or optional != "remote" else None
    for key, endpoint in (("listen", listen), ("remote", remote)):
        if endpoint is not None and not _is_ipv4(endpoint.host):
            raise ConfigError(section.key(key), str(endpoint), 'udp2raw works on IPv4 addresses: "10.0.0.1:4096"')
    key = section.get("key", str, "secret key")
    if not key.split() or key != key.strip():
        raise ConfigError(section.key("key"), "(hidden)", "udp2raw cuts a key at its first blank: use one without "
                                                           "leading or inner blanks, or both ends will disagree")
    auto_rule = section.get("auto_rule", bool, True)
    return U2rConfig(
        role=role, path=section.path, name=section.get("name", str, f"{role}[{index}]"),
        listen=listen, remote=remote, key=key,
        raw_mode=section.choice("raw_mode", RAW_MODES, "faketcp"),
        cipher_mode=section.choice("cipher_mode", CIPHER_MODES, "aes128cbc"),
        auth_mode=section.choice("auth_mode", AUTH_MODES, "md5"),
        auto_rule=auto_rule,
        keep_rule=section.get("keep_rule", bool, False),
        firewall=section.choice("firewall", FIREWALLS, "auto"),
        source_ip=section.ip("source_ip", None) if section.has("source_ip") else None,
        source_port=section.port("source_port", None) if section.has("source_port") else None,
        seq_mode=section.number("seq_mode", int, 3, 0, 4),
        hb_mode=section.number("hb_mode", int, 1, 0, 1),
        hb_len=section.number("hb_len", int, 1200, 0, 1500),
        anti_replay=not section.get("disable_anti_replay", bool, False),
        fix_gro=section.get("fix_gro", bool, False),
        mtu_warn=section.number("mtu_warn", int, 1375, 100, 9000),
        sock_buf=section.number("sock_buf", int, 1024, 10, 10240) * 1024,
        dev=section.get("dev", str, None),
    )


def u2r_client(section: Section, index: int) -> U2rConfig:
    return u2r_role(section, index, "u2r-client")


def u2r_server(section: Section, index: int) -> U2rConfig:
    return u2r_role(section, index, "u2r-server")


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and 0 <= int(p) < 256 for p in parts)
