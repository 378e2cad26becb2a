"""`[[kcp-client]]` and `[[kcp-server]]` tables: kcptun's option names and defaults (spec §7).

A kcptun JSON config reads the same once written as TOML. Options kcptun has and sidecar does not do
(raw TCP mode, SNMP log files, pprof) are rejected with the key, the value and what to do instead.
"""

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from sidecar.config_reader import Section
from sidecar.errors import ConfigError
from sidecar.proto.kcp import MODES
from sidecar.proto.kcp_crypt import KcpCrypt, derive_key
from sidecar.proto.kcp_pipeline import KcpPipeline, KcpSettings

DEFAULT_KEY = "it's a secrect"  # kcptun's default, typo included: the two ends must agree
MAX_MTU = 1500
MIN_MTU = 100

# kcptun options sidecar does not implement, and what to do instead.
UNSUPPORTED = {
    "tcp": "raw TCP mode (tcpraw) is not supported; remove it (or set it false) and run a udp2raw role "
           "in front for fake-TCP",
    "snmplog": "sidecar logs its counters at shutdown instead; remove it",
    "snmpperiod": "sidecar logs its counters at shutdown instead; remove it",
    "pprof": "not supported; remove it",
    "log": "sidecar logs to stderr; set the level in [log] and remove this key",
    "quiet": "per-stream lines are logged at debug level only; remove it",
}


@dataclass(frozen=True, slots=True)
class Address:
    """A kcptun-style address: "host:port", ":port" (all interfaces) or, for a server target, a unix path."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class KcpCommon:
    """What both kcptun roles share; `listen_key` names the key holding the listen port."""

    role: str
    path: str
    name: str
    listen: Address | None  # None: no socket of its own, only stages of this process (sidecar.config_chain)
    listen_key: str
    crypt: str
    key: bytes
    settings: KcpSettings
    dscp: int
    sockbuf: int
    via: str | None = field(default=None, kw_only=True)  # the u2r role of this process its datagrams ride
    given: frozenset[str] = field(default=frozenset(), kw_only=True)  # the keys the table set


@dataclass(frozen=True)
class KcpClientConfig(KcpCommon):
    remote: Address | None  # None: the sessions ride `via`, whose server decides where they go
    conn: int = 1
    autoexpire_s: float = 0.0
    scavengettl_s: float = 600.0
    tcp: bool = True
    udp: bool = False


@dataclass(frozen=True)
class KcpServerConfig(KcpCommon):
    target: Address | str = Address("127.0.0.1", 12948)  # str: a unix socket path
    tcp: bool = False
    udp: bool = True


def parse_address(section: Section, name: str, value: str, *, bind: bool) -> Address:
    """`value` of key `name` as an Address; a listen address may omit the host (all interfaces)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or (not host and not bind):
        example = '":29900" or "127.0.0.1:29900"' if bind else '"203.0.113.7:29900"'
        raise ConfigError(section.key(name), value, f"write it as host:port, e.g. {example}")
    if bind:
        try:
            host = str(ipaddress.ip_address(host or "0.0.0.0"))
        except ValueError:
            raise ConfigError(section.key(name), value, 'listen on an IP address, e.g. "0.0.0.0:29900"') from None
    return Address(host, int(port))


def _switch(section: Section, name: str, default: bool) -> bool:
    """kcptun's JSON has 0/1 for some switches and true/false for others: take either."""
    value = section.get(name, object, default)
    if not isinstance(value, bool | int) or value not in (0, 1):
        raise ConfigError(section.key(name), value, "use true or false (or 1 or 0)")
    return bool(value)


def _reject_unsupported(section: Section) -> None:
    for name, fix in UNSUPPORTED.items():
        if section.has(name):
            value = section.get(name, object)
            if name == "tcp" and value is False:
                continue
            raise ConfigError(section.key(name), value, fix)


def _settings(section: Section, sndwnd: int, rcvwnd: int) -> KcpSettings:
    mode = section.choice("mode", tuple(MODES), "fast")
    preset = MODES[mode]
    manual = (
        _switch(section, "nodelay", False),
        section.number("interval", int, 50, 10, 5000),
        section.number("resend", int, 0, 0, 1000),
        _switch(section, "nc", False),
    )  # read in every mode (kcptun configs often carry them); used only by mode = "manual", as in kcptun
    nodelay, interval, resend, nc = manual if mode == "manual" else preset
    datashard = section.number("datashard", int, 10, 0, 255)
    parityshard = section.number("parityshard", int, 3, 0, 255)
    if datashard + parityshard > 256:
        raise ConfigError(section.key("parityshard"), parityshard, "datashard + parityshard must be at most 256")
    return KcpSettings(
        mtu=section.number("mtu", int, 1350, MIN_MTU, MAX_MTU),
        sndwnd=section.number("sndwnd", int, sndwnd, 1, 65535),
        rcvwnd=section.number("rcvwnd", int, rcvwnd, 1, 65535),
        datashard=datashard,
        parityshard=parityshard,
        nodelay=nodelay,
        interval=interval,
        resend=resend,
        nc=nc,
        acknodelay=_switch(section, "acknodelay", False),
        nocomp=_switch(section, "nocomp", False),
        smuxver=section.number("smuxver", int, 1, 1, 2),
        smuxbuf=section.number("smuxbuf", int, 4194304, 1024, 2**31 - 1),
        streambuf=section.number("streambuf", int, 2097152, 1024, 2**31 - 1),
        keepalive_s=section.number("keepalive", float, 10.0, 1, 30),
    )


def _common(section: Section, role: str, index: int, listen: Address, listen_key: str,
            windows: tuple[int, int]) -> dict[str, Any]:
    _reject_unsupported(section)
    password = section.get("key", str, DEFAULT_KEY)
    if not password:
        raise ConfigError(section.key("key"), password, "use a non-empty key, the same on both ends")
    key = derive_key(password)
    crypt = section.get("crypt", str, "aes")
    settings = _settings(section, *windows)
    _validate(section, crypt, key, settings)
    return {
        "role": role,
        "path": section.path,
        "name": section.get("name", str, f"{role}[{index}]"),
        "listen": listen,
        "listen_key": listen_key,
        "crypt": crypt,
        "key": key,
        "settings": settings,
        "dscp": section.number("dscp", int, 0, 0, 63),
        "sockbuf": section.number("sockbuf", int, 4194304, 4096, 2**30),
        "via": section.get("via", str, None),
        "given": frozenset(section.keys()),
    }


def _validate(section: Section, crypt: str, key: bytes, settings: KcpSettings) -> None:
    """Build the crypt and a throwaway session: the cores' own checks, with this table's key names."""
    try:
        KcpPipeline(0, settings, KcpCrypt(crypt, key), client=True, now=0.0)
    except ImportError as exc:
        fix = f"snappy compression needs {exc.name} (pip install cramjam crc32c); install it or set nocomp = true"
        raise ConfigError(section.key("nocomp"), False, f"{fix} on both ends") from None
    except ConfigError as exc:
        name = exc.key.split("/")[0]  # fec's shape check names "datashard/parityshard"
        raise ConfigError(section.key(name), exc.value, exc.fix) from None


def kcp_client(section: Section, index: int) -> KcpClientConfig:
    listen = parse_address(section, "localaddr", section.get("localaddr", str, ":12948"), bind=True)
    return KcpClientConfig(
        **_common(section, "kcp-client", index, listen, "localaddr", (128, 512)),
        remote=(parse_address(section, "remoteaddr", section.get("remoteaddr", str, example='"203.0.113.7:29900"'),
                              bind=False) if section.has("remoteaddr") or not section.has("via") else None),
        conn=section.number("conn", int, 1, 1, 256),
        autoexpire_s=section.number("autoexpire", float, 0.0, 0, 365 * 86400),
        scavengettl_s=section.number("scavengettl", float, 600.0, 0, 365 * 86400),
    )


def kcp_server(section: Section, index: int) -> KcpServerConfig:
    listen = parse_address(section, "listen", section.get("listen", str, ":29900"), bind=True)
    return KcpServerConfig(
        **_common(section, "kcp-server", index, listen, "listen", (1024, 1024)),
        target=_target(section),
    )


def _target(section: Section) -> Address | str:
    value = section.get("target", str, "127.0.0.1:12948")
    if value.startswith("/"):
        return value
    return parse_address(section, "target", value, bind=False)  # a host name is resolved at each dial
