"""The TOML config: every role the process runs, validated as a whole before anything binds.

Role tables use shadowsocks-libev's JSON key names (`server`, `server_port`, `local_address`,
`local_port`, `password`, `key`, `method`, `timeout`, `mode`), so a libev config reads the same.
"""

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.config_chain import RelayConfig, link_chains, relay
from sidecar.config_kcp import KcpClientConfig, KcpServerConfig, kcp_client, kcp_server
from sidecar.config_reader import Section
from sidecar.config_u2r import U2rConfig, u2r_client, u2r_server
from sidecar.errors import ConfigError
from sidecar.proto.acl import parse_acl
from sidecar.proto.dgram_fec import FecParams, check_params, parse_ratio
from sidecar.proto.ss_aead import Cipher, decode_base64_key, method_by_name

MODES = ("tcp_only", "tcp_and_udp", "udp_only")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_METHOD = "chacha20-ietf-poly1305"


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SsCommon:
    """What every Shadowsocks role shares."""

    role: str
    path: str
    name: str
    cipher: Cipher
    mode: str
    timeout_s: float
    no_delay: bool
    reuse_port: bool
    max_connections: int
    acl: str | None  # a shadowsocks-libev ACL file: routes for clients, the outbound block list for servers
    # In-process chains (sidecar.config_chain): the roles of this process TCP and UDP ride, and the
    # datagram FEC stage between UDP and its link.
    via: str | None = field(default=None, kw_only=True)
    udp_via: str | None = field(default=None, kw_only=True)
    udp_fec: FecParams | None = field(default=None, kw_only=True)

    @property
    def tcp(self) -> bool:
        return self.mode != "udp_only"

    @property
    def udp(self) -> bool:
        return self.mode != "tcp_only"

    @property
    def listen_key(self) -> str:
        """The key that holds the listen port (named in port-clash errors)."""
        return "server_port" if self.role == "ss-server" else "local_port"


@dataclass(frozen=True)
class SsLocalConfig(SsCommon):
    listen: Endpoint
    server: Endpoint | None  # None: TCP and UDP both ride stages of this process
    socks_users: dict[str, str] | None = None


@dataclass(frozen=True)
class SsTunnelConfig(SsCommon):
    listen: Endpoint
    server: Endpoint | None  # None: TCP and UDP both ride stages of this process
    tunnel: Endpoint = Endpoint("127.0.0.1", 53)


@dataclass(frozen=True)
class SsRedirConfig(SsCommon):
    listen: Endpoint
    server: Endpoint | None  # None: TCP and UDP both ride stages of this process
    lan_interface: str | None = None  # set: sidecar installs the firewall rules at start, removes them at stop
    bypass: tuple[str, ...] = ()
    bypass_private: bool = True
    fwmark: int = 0x5CA1
    route_table: int = 0x5CA
    firewall: str = "auto"  # nft when present, else iptables


@dataclass(frozen=True)
class SsServerConfig(SsCommon):
    listen: Endpoint | None  # None: clients arrive only through stages of this process
    block_private: bool = True  # refuse private, loopback and link-local destinations
    replay_capacity: int = 100_000
    replay_window_s: float = 3600.0
    probe_delay_s: tuple[float, float] = (10.0, 40.0)


RoleConfig = (SsLocalConfig | SsTunnelConfig | SsRedirConfig | SsServerConfig | U2rConfig | KcpClientConfig
              | KcpServerConfig | RelayConfig)


@dataclass(frozen=True)
class ManagerConfig:
    """[manager]: the ss-manager UDP API; ports it adds run as ss-server roles with these settings."""

    address: Endpoint
    server: str = "0.0.0.0"
    method: str = DEFAULT_METHOD
    mode: str = "tcp_and_udp"
    timeout_s: float = 60.0
    block_private: bool = True


@dataclass(frozen=True)
class Config:
    roles: list[RoleConfig]
    log_level: str = "info"
    source: str = "built-in default"
    control_socket: str | None = None  # None: the default path, shared with other sidecars if free
    control_enabled: bool = True
    manager: ManagerConfig | None = None
    stats_file: str | None = None  # counters saved here survive restarts
    stats_interval_s: float = 10.0


def _common(section: Section, role: str, index: int) -> dict[str, Any]:
    method = method_by_name(section.get("method", str, DEFAULT_METHOD), section.key("method"))
    if section.has("password") == section.has("key"):
        raise ConfigError(section.key("password"), None,
                          'give exactly one of password = "..." or key = "<base64>" (see `sidecar genkey`)')
    if section.has("key"):
        master = decode_base64_key(section.get("key", str), method.key_len, section.key("key"))
        cipher = Cipher(method, master)
    else:
        password = section.get("password", str)
        if not password:
            raise ConfigError(section.key("password"), password, "use a non-empty password")
        cipher = Cipher.from_password(method, password)
    return {
        "role": role,
        "path": section.path,
        "name": section.get("name", str, f"{role}[{index}]"),
        "cipher": cipher,
        "mode": section.choice("mode", MODES, "tcp_only"),
        "timeout_s": section.number("timeout", float, 60.0, 1, 86400),
        "no_delay": section.get("no_delay", bool, True),
        "reuse_port": section.get("reuse_port", bool, False),
        "max_connections": section.number("max_connections", int, 1024, 1, 1_000_000),
        "acl": _acl_file(section),
        "via": section.get("via", str, None),
        "udp_via": section.get("udp_via", str, None),
        "udp_fec": _udp_fec(section),
    }


def _udp_fec(section: Section) -> FecParams | None:
    """The datagram FEC stage (UDPspeeder-like `data:parity`, a bounded wait, adaptive parity), if asked for."""
    knobs = ("udp_fec_wait_ms", "udp_fec_adaptive", "udp_fec_max_parity")
    if not section.has("udp_fec"):
        for knob in knobs:
            if section.has(knob):
                raise ConfigError(section.key(knob), section.get(knob, object), 'set udp_fec = "data:parity" too, '
                                  'e.g. udp_fec = "2:2"')
        return None
    data, parity = parse_ratio(section.get("udp_fec", str), section.key("udp_fec"))
    adaptive = section.get("udp_fec_adaptive", bool, False)
    params = FecParams(data, parity, section.number("udp_fec_wait_ms", float, 10.0, 0, 1000) / 1000, adaptive,
                       section.number("udp_fec_max_parity", int, max(parity, 2 * data), parity, 64))
    check_params(params, section.key("udp_fec"))
    return params


def _acl_file(section: Section) -> str | None:
    """The ACL path, read and parsed now so that a bad file is a config error, not a runtime one."""
    path = section.get("acl", str, None)
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(section.key("acl"), path, f"cannot read the ACL file ({exc.strerror})") from None
        parse_acl(text, path)
    return path


def _endpoint(section: Section, host_key: str, port_key: str, *, bind: bool, host_default: Any = None) -> Endpoint:
    read_host = section.ip if bind else section.host
    host = read_host(host_key) if host_default is None else read_host(host_key, host_default)
    return Endpoint(host, section.port(port_key))


def _target(section: Section, name: str) -> Endpoint:
    value = section.get(name, str, example='"8.8.8.8:53"')
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(section.key(name), value, 'write it as "host:port", e.g. "8.8.8.8:53" or "[::1]:53"')
    return Endpoint(host, int(port))


def _server(section: Section) -> Endpoint | None:
    """The ss-server a client role talks to; absent only in a chain (sidecar.config_chain checks that)."""
    if not section.has("server") and not section.has("server_port") and _rides(section):
        return None
    return _endpoint(section, "server", "server_port", bind=False)


def _rides(section: Section) -> bool:
    return section.has("via") or section.has("udp_via")


def _ss_local(section: Section, index: int) -> SsLocalConfig:
    users = section.get("socks_users", dict, None)
    if users is not None and not all(isinstance(v, str) for v in users.values()):
        raise ConfigError(section.key("socks_users"), users, 'map user names to passwords, e.g. { alice = "pw" }')
    return SsLocalConfig(
        **_common(section, "ss-local", index),
        listen=_endpoint(section, "local_address", "local_port", bind=True, host_default="127.0.0.1"),
        server=_server(section),
        socks_users=users,
    )


def _ss_tunnel(section: Section, index: int) -> SsTunnelConfig:
    return SsTunnelConfig(
        **_common(section, "ss-tunnel", index),
        listen=_endpoint(section, "local_address", "local_port", bind=True, host_default="127.0.0.1"),
        server=_server(section),
        tunnel=_target(section, "tunnel_address"),
    )


def _ss_redir(section: Section, index: int) -> SsRedirConfig:
    return SsRedirConfig(
        **_common(section, "ss-redir", index),
        listen=_endpoint(section, "local_address", "local_port", bind=True, host_default="0.0.0.0"),
        server=_server(section),
        lan_interface=section.get("lan_interface", str, None),
        bypass=_networks(section, "bypass"),
        bypass_private=section.get("bypass_private", bool, True),
        fwmark=section.number("fwmark", int, 0x5CA1, 1, 0xFFFFFFFF),
        route_table=section.number("route_table", int, 0x5CA, 1, 0xFFFFFFFE),
        firewall=section.choice("firewall", ("auto", "nft", "iptables"), "auto"),
    )


def _networks(section: Section, name: str) -> tuple[str, ...]:
    values = section.get(name, list, [])
    try:
        return tuple(str(ipaddress.ip_network(v, strict=False)) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(section.key(name), values, 'list addresses or CIDRs, e.g. ["198.51.100.0/24"]') from None


def _ss_server(section: Section, index: int) -> SsServerConfig:
    low = section.number("probe_delay_min_s", float, 10.0, 0, 600)
    high = section.number("probe_delay_max_s", float, 40.0, low, 3600)
    return SsServerConfig(
        **_common(section, "ss-server", index),
        listen=(None if not section.has("server") and not section.has("server_port") and _rides(section)
                else _endpoint(section, "server", "server_port", bind=True, host_default="0.0.0.0")),
        block_private=section.get("block_private", bool, True),
        replay_capacity=section.number("replay_capacity", int, 100_000, 100, 10_000_000),
        replay_window_s=section.number("replay_window_s", float, 3600.0, 1, 7 * 86400),
        probe_delay_s=(low, high),
    )


ROLE_BUILDERS = {"ss-local": _ss_local, "ss-tunnel": _ss_tunnel, "ss-redir": _ss_redir, "ss-server": _ss_server,
                 "u2r-client": u2r_client, "u2r-server": u2r_server,
                 "kcp-client": kcp_client, "kcp-server": kcp_server, "relay": relay}


def parse_config(doc: dict[str, Any], source: str) -> Config:
    """A validated Config from a parsed TOML document; raises ConfigError on the first problem."""
    top = Section("", doc)
    log = Section("log", top.get("log", dict, {}))
    level = log.choice("level", LOG_LEVELS, "info")
    log.finish()
    control = Section("control", top.get("control", dict, {}))
    control_enabled = control.get("enabled", bool, True)
    control_socket = control.get("socket", str, None)
    control.finish()
    manager = _manager(Section("manager", top.get("manager", dict, {}))) if top.has("manager") else None
    stats = Section("stats", top.get("stats", dict, {}))
    stats_file = stats.get("file", str, None)
    stats_interval_s = stats.number("interval_s", float, 10.0, 1, 3600)
    stats.finish()
    roles: list[RoleConfig] = []
    for role, build in ROLE_BUILDERS.items():
        tables = top.get(role, (list, dict), [])  # type: ignore[arg-type]
        for index, table in enumerate([tables] if isinstance(tables, dict) else tables):
            if not isinstance(table, dict):
                raise ConfigError(role, table, f"write each role as a table: [[{role}]]")
            section = Section(f"{role}[{index}]", table)
            roles.append(build(section, index))
            section.finish()
    _finish_top(top, doc)
    if not roles and manager is None:
        tables = ", ".join(f"[[{r}]]" for r in ROLE_BUILDERS)
        raise ConfigError("(roles)", None, f"configure at least one role: {tables}")
    roles = link_chains(roles)
    check_port_clashes(roles)
    return Config(roles=roles, log_level=level, source=source, control_socket=control_socket,
                  control_enabled=control_enabled, manager=manager, stats_file=stats_file,
                  stats_interval_s=stats_interval_s)


def _manager(section: Section) -> ManagerConfig:
    address = _target(section, "manager_address")
    config = ManagerConfig(
        address=Endpoint(section_ip(section, "manager_address", address.host), address.port),
        server=section.ip("server", "0.0.0.0"),
        method=method_by_name(section.get("method", str, DEFAULT_METHOD), section.key("method")).name,
        mode=section.choice("mode", MODES, "tcp_and_udp"),
        timeout_s=section.number("timeout", float, 60.0, 1, 86400),
        block_private=section.get("block_private", bool, True),
    )
    section.finish()
    return config


def section_ip(section: Section, name: str, host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(section.key(name), host, 'give an IP address and port, e.g. "127.0.0.1:6001"') from None


def _finish_top(top: Section, doc: dict[str, Any]) -> None:
    try:
        top.finish()
    except ConfigError as exc:
        name = exc.key.lstrip(".")
        raise ConfigError(name, doc[name],
                          f"unknown section; use [log], [control], [manager], [stats] or one of "
                          f"{', '.join(ROLE_BUILDERS)}") from None


def listeners(role: RoleConfig) -> list[tuple[str, Endpoint]]:
    """The (protocol, endpoint) pairs a role binds."""
    if role.listen is None:
        return []
    return [(proto, role.listen) for proto, on in (("tcp", role.tcp), ("udp", role.udp)) if on]


def _overlap(a: Endpoint, b: Endpoint) -> bool:
    if a.port != b.port:
        return False
    ia, ib = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    return ia == ib or (ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified))


def check_port_clashes(roles: list[RoleConfig]) -> None:
    seen: list[tuple[str, Endpoint, str]] = []
    for role in roles:
        for proto, endpoint in listeners(role):
            for other_proto, other, owner in seen:
                if proto == other_proto and _overlap(endpoint, other):
                    raise ConfigError(f"{role.path}.{role.listen_key}", endpoint.port,
                                      f"{proto} {endpoint} is already taken by {owner}; pick another port")
            seen.append((proto, endpoint, role.name))


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; a missing file or a TOML syntax error is a ConfigError too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("-c", str(path), f"cannot read the file ({exc.strerror}); check the path") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", str(path), f"not valid TOML: {exc}") from None
    return parse_config(doc, str(path))


def default_config(raw: bool | None = None) -> Config:
    """The built-in demo (sidecar.config_demo): the whole chain on loopback, udp2raw's raw mode when `raw`
    (default: when running as root with a firewall tool)."""
    from sidecar import config_demo

    use_raw = config_demo.can_use_raw() if raw is None else raw
    return parse_config(config_demo.demo_doc(use_raw), config_demo.describe(use_raw))
