"""Chains: which role of this process another rides (`via`, `udp_via`, a relay's `from`/`to`), checked whole.

A stage names the stage below it by its `name`. What may ride what:

    client side                                  server side (the mirror)
    ss-local/tunnel/redir  via     -> kcp-client  ss-server   via     -> kcp-server
    ss-local/tunnel/redir  udp_via -> u2r-client  ss-server   udp_via -> u2r-server
    kcp-client             via     -> u2r-client  kcp-server  via     -> u2r-server
    relay                  to      -> u2r-client  relay       from    -> u2r-server

TCP is a stream and rides a stream carrier (KCP's smux streams); UDP and KCP's own packets are
datagrams and ride a datagram link (a udp2raw conn). A carrier that others ride loses the socket it
would otherwise need when the table leaves it out (a kcp-client's `localaddr`, a kcp-server's
`target`, a u2r-client's `listen`, a u2r-server's `remote`).
"""

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sidecar.config_kcp import KcpClientConfig, KcpServerConfig
from sidecar.config_reader import Section
from sidecar.config_u2r import U2rConfig
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from sidecar.config import Endpoint

CLIENT_SS = ("ss-local", "ss-tunnel", "ss-redir")
# (rider role, its key) -> (the role it may name, what to say when it names another kind)
RIDES = {
    **{(ss, "via"): ("kcp-client", "Shadowsocks TCP is a stream: name a [[kcp-client]] (which may itself ride a "
                                   "u2r-client with via)") for ss in CLIENT_SS},
    **{(ss, "udp_via"): ("u2r-client", "UDP is datagrams and KCP carries streams only (as kcptun): name a "
                                       "[[u2r-client]]") for ss in CLIENT_SS},
    ("ss-server", "via"): ("kcp-server", "an ss-server's TCP arrives on a kcp-server's streams: name a [[kcp-server]]"),
    ("ss-server", "udp_via"): ("u2r-server", "an ss-server's UDP arrives on a udp2raw server: name a [[u2r-server]]"),
    ("kcp-client", "via"): ("u2r-client", "KCP sends datagrams: name a [[u2r-client]]"),
    ("kcp-server", "via"): ("u2r-server", "KCP receives datagrams: name a [[u2r-server]]"),
    ("relay", "from"): ("u2r-server", "a relay takes the flows of a [[u2r-server]]"),
    ("relay", "to"): ("u2r-client", "a relay sends over a [[u2r-client]]"),
}


@dataclass(frozen=True)
class RelayConfig:
    """[[relay]]: datagrams from `listen` (UDP) or the u2r-server `source`, each flow forwarded as one
    flow to `remote` (UDP) or over the u2r-client `sink`. Payloads pass untouched: a relay needs no
    Shadowsocks or KCP key."""

    role: str
    path: str
    name: str
    listen: "Endpoint | None"
    remote: "Endpoint | None"
    source: str | None
    sink: str | None
    timeout_s: float

    tcp = False

    @property
    def udp(self) -> bool:
        return self.listen is not None

    @property
    def listen_key(self) -> str:
        return "listen"


def relay(section: Section, index: int) -> RelayConfig:
    from sidecar.config import _target  # config imports this module for its builders

    source, sink = section.get("from", str, None), section.get("to", str, None)
    if (source is None) != section.has("listen"):
        raise ConfigError(section.key("listen"), section.get("listen", str, None),
                          'give exactly one of listen = "ip:port" (UDP) or from = "<u2r-server name>"')
    if (sink is None) != section.has("remote"):
        raise ConfigError(section.key("remote"), section.get("remote", str, None),
                          'give exactly one of remote = "host:port" (UDP) or to = "<u2r-client name>"')
    return RelayConfig(
        role="relay", path=section.path, name=section.get("name", str, f"relay[{index}]"),
        listen=_target(section, "listen") if source is None else None,
        remote=_target(section, "remote") if sink is None else None,
        source=source, sink=sink, timeout_s=section.number("timeout", float, 60.0, 1, 86400))


def rides(config: Any) -> list[tuple[str, str]]:
    """The (key, name) pairs of the roles `config` rides."""
    keys = ("from", "to") if config.role == "relay" else ("via", "udp_via")
    attrs = {"from": "source", "to": "sink"}
    pairs = [(key, getattr(config, attrs.get(key, key), None)) for key in keys]
    return [(key, name) for key, name in pairs if name is not None]


def link_chains(roles: list[Any]) -> list[Any]:
    """The roles with every ride checked, and carriers that others ride stripped of sockets left unset."""
    by_name: dict[str, Any] = {}
    for config in roles:
        if config.name in by_name:
            raise ConfigError(f"{config.path}.name", config.name, "another role has this name; names must differ "
                                                                  "when a chain refers to them")
        by_name[config.name] = config
    riders: dict[str, list[tuple[Any, str]]] = {}
    for config in roles:
        for key, name in rides(config):
            _check_ride(config, key, name, by_name)
            riders.setdefault(name, []).append((config, key))
    return [_as_carrier(config, riders.get(config.name, [])) for config in roles]


def _check_ride(config: Any, key: str, name: str, by_name: dict[str, Any]) -> None:
    where = f"{config.path}.{key}"
    lower = by_name.get(name)
    if lower is None:
        known = ", ".join(f"{c.name} ({c.role})" for c in by_name.values() if c is not config)
        raise ConfigError(where, name, f"no role is named {name!r}; name one of: {known or '(none)'}")
    want, fix = RIDES[(config.role, key)]
    if lower.role != want:
        raise ConfigError(where, name, f"{name!r} is a {lower.role}; {fix}")
    if key == "udp_via" and not config.udp:
        raise ConfigError(where, name, 'UDP is off (mode = "tcp_only"): set mode = "tcp_and_udp" or remove udp_via')
    if key == "via" and config.role in (*CLIENT_SS, "ss-server") and not config.tcp:
        raise ConfigError(where, name, 'TCP is off (mode = "udp_only"): remove via, or use udp_via')
    if config.role in (*CLIENT_SS, "ss-server") and config.udp_fec is not None and config.udp_via is None:
        raise ConfigError(f"{config.path}.udp_fec", "(set)", "the datagram FEC stage sits on a udp2raw link: set "
                                                             "udp_via too (both ends need the same udp_fec)")


def _as_carrier(config: Any, riders: list[tuple[Any, str]]) -> Any:
    """`config` with the sockets its riders replace dropped; ConfigError for what cannot work."""
    if isinstance(config, KcpClientConfig):
        if riders and "localaddr" not in config.given:
            return replace(config, listen=None)
    elif isinstance(config, KcpServerConfig):
        return _kcp_server_carrier(config, riders)
    elif isinstance(config, U2rConfig):
        _u2r_carrier(config, riders)
    elif config.role in CLIENT_SS and config.server is None:
        _needs_server(config)
    elif config.role == "ss-server" and config.listen is None:
        _needs_listen(config)
    return config


def _kcp_server_carrier(config: KcpServerConfig, riders: list[tuple[Any, str]]) -> KcpServerConfig:
    ss = [rider for rider, _ in riders if rider.role == "ss-server"]
    if len(ss) > 1:
        raise ConfigError(f"{ss[1].path}.via", config.name, f"{ss[0].name} already takes the streams of "
                                                            f"{config.name}; give each ss-server its own kcp-server")
    if ss and "target" in config.given:
        raise ConfigError(f"{config.path}.target", str(config.target), f"the streams go to {ss[0].name} (its via); "
                                                                       "remove target")
    if config.via is not None and "listen" not in config.given:
        config = replace(config, listen=None)
    return config


def _u2r_carrier(config: U2rConfig, riders: list[tuple[Any, str]]) -> None:
    if config.role == "u2r-client" and config.listen is None and not riders:
        raise ConfigError(f"{config.path}.listen", None, 'this key is required (the local UDP port, e.g. '
                                                         '"127.0.0.1:3333"), unless a stage rides it with via')
    if config.role == "u2r-server":
        if config.remote is None and not riders:
            raise ConfigError(f"{config.path}.remote", None, 'this key is required (where flows go, e.g. '
                                                             '"127.0.0.1:29900"), unless a stage rides it with via')
        if config.remote is not None and riders:
            raise ConfigError(f"{config.path}.remote", str(config.remote),
                              f"{riders[0][0].name} takes this server's flows (its {riders[0][1]}); remove remote")


def _needs_server(config: Any) -> None:
    """A client role without server/server_port: every protocol it serves must ride a stage."""
    for proto, on, key in (("TCP", config.tcp, "via"), ("UDP", config.udp, "udp_via")):
        if on and getattr(config, key) is None:
            raise ConfigError(f"{config.path}.server", None, f"{proto} goes to an ss-server: set server and "
                                                             f"server_port, or {key}")


def _needs_listen(config: Any) -> None:
    for proto, on, key in (("TCP", config.tcp, "via"), ("UDP", config.udp, "udp_via")):
        if on and getattr(config, key) is None:
            raise ConfigError(f"{config.path}.server_port", None, f"{proto} needs a port to listen on: set "
                                                                  f"server_port, or {key}")
