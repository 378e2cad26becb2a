"""SIGHUP: apply an edited config to a running process without touching roles that did not change.

A role is the same role when its table kind and name match; it keeps running (with its connections)
when its whole configuration is equal. A changed role is replaced: the old one stops accepting and
drains in the background while the new one binds. New roles start; removed roles stop. The new
file is validated as a whole first: if it is not valid, nothing changes.
"""

import logging

import gevent

from sidecar.config import Config, RoleConfig, load_config
from sidecar.errors import SidecarError
from sidecar.roles import Role, build_role, chain

log = logging.getLogger("sidecar")
DRAIN_TIMEOUT_S = 5.0


def role_key(config: RoleConfig) -> tuple[str, str]:
    return config.role, config.name


def reload_roles(path: str, running: list[Role]) -> tuple[Config | None, list[Role]]:
    """(the new config or None if it was rejected, the roles running afterwards)."""
    try:
        config = load_config(path)
    except SidecarError as exc:
        log.error("reload rejected, nothing changed: %s", exc)
        return None, running
    old = {role_key(r.config): r for r in running}
    result: list[Role] = []
    fresh: list[Role] = []
    for role_config in config.roles:
        current = old.pop(role_key(role_config), None)
        if current is not None and current.config == role_config:
            result.append(current)
            continue
        if current is not None:
            _retire(current, "changed")
        bound = _bind(role_config)
        if bound is not None:
            fresh.append(bound)
    for gone in old.values():
        _retire(gone, "removed")
    result += fresh
    chain.connect(result)  # before the new roles start: a stage may call its carrier at once
    for role in fresh:
        role.start()
    log.info("reloaded %s: %d role(s) running", path, len(result))
    return config, result


def _retire(role: Role, why: str) -> None:
    log.info("%s %s: no new connections; open ones drain for up to %.0f s", role.config.name, why, DRAIN_TIMEOUT_S)
    role.stop_accepting()
    gevent.spawn(role.drain, DRAIN_TIMEOUT_S)


def _bind(config: RoleConfig) -> Role | None:
    role = build_role(config)
    try:
        role.bind()
    except (OSError, SidecarError) as exc:
        role.close()
        log.error("%s could not start after the reload: %s", config.name, exc)
        return None
    return role
