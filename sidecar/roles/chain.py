"""Join the bound roles of one process into chains: each stage gets the object of the stage it rides.

sidecar.config_chain has already checked every name and pairing, so this only hands references
over: a client stage gets its carrier (it calls down), a server-side carrier gets its riders (it
calls up). Run again after a reload, it re-joins the roles then running.
"""

from typing import Any

from sidecar.config_chain import CLIENT_SS


def connect(roles: list[Any]) -> None:
    by_name = {role.config.name: role for role in roles}
    for role in roles:
        if role.config.role == "u2r-server":
            role.acceptors.clear()
        elif role.config.role == "u2r-client":
            role.new_server_hooks.clear()
        elif role.config.role == "kcp-server":
            role.upper = None
    for role in roles:
        _connect(role, role.config, by_name)


def _connect(role: Any, cfg: Any, by_name: dict[str, Any]) -> None:
    if cfg.role in CLIENT_SS:
        role.carrier = by_name[cfg.via] if cfg.via else None
        role.datagram_link = by_name[cfg.udp_via] if cfg.udp_via else None
    elif cfg.role == "ss-server":
        if cfg.via:
            by_name[cfg.via].upper = role
        if cfg.udp_via:
            by_name[cfg.udp_via].carry(role)
    elif cfg.role == "kcp-client":
        role.lower = by_name[cfg.via] if cfg.via else None
        if cfg.via:
            role.lower.on_new_server(role.server_restarted)
    elif cfg.role == "kcp-server" and cfg.via:
        by_name[cfg.via].carry(role)
    elif cfg.role == "relay":
        role.sink = by_name[cfg.sink] if cfg.sink else None
        if cfg.source:
            by_name[cfg.source].carry(role)
