"""Run a validated config: bind every role first (all or nothing), serve, and stop cleanly on a signal."""

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from sidecar import control
from sidecar.config import Config, listeners
from sidecar.errors import SidecarError
from sidecar.net.sockets import describe_os_error
from sidecar.reload import DRAIN_TIMEOUT_S, reload_roles
from sidecar.roles import Role, build_role

log = logging.getLogger("sidecar")


class BindError(SidecarError):
    """A role could not take its port; nothing was started."""


def bind_all(config: Config) -> list[Role]:
    """Every role bound, or none: on the first failure the ports already taken are released."""
    roles: list[Role] = []
    try:
        for role_config in config.roles:
            role = build_role(role_config)
            try:
                role.bind()
            except OSError as exc:
                where = ", ".join(f"{proto} {endpoint}" for proto, endpoint in listeners(role_config))
                raise BindError(f"{role_config.name}: cannot listen on {where}: {describe_os_error(exc)} "
                                "(another process on that port? change the port in the config)") from None
            roles.append(role)
    except BaseException:
        for role in roles:
            role.close()
        raise
    return roles


def serve(config: Config, config_path: str | None = None, ready: Event | None = None) -> int:
    """Run until SIGTERM or SIGINT (SIGHUP reloads `config_path`); returns the exit status."""
    roles = bind_all(config)
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    log.info("config: %s", config.source)
    control_server = start_control(config, lambda: roles)
    for role in roles:
        role.start()

    def reload() -> None:
        nonlocal roles
        if config_path is None:
            log.warning("SIGHUP: no config file to reload (started without -c)")
            return
        roles = reload_roles(config_path, roles)[1]

    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(reload))
    log.info("sidecar ready: %d role(s) running", len(roles))
    if ready is not None:
        ready.set()
    stop.wait()
    if control_server is not None:
        control_server.stop()
    shutdown(roles)
    return 0


def start_control(config: Config, roles: Callable[[], list[Role]]) -> control.ControlServer | None:
    """The control socket for `sidecar status`. An explicit path that is taken is an error; the
    default path, when another sidecar already serves it, is skipped with a warning."""
    if not config.control_enabled:
        return None
    started = time.time()

    def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "uptime_s": round(time.time() - started, 1), "config": config.source,
                "roles": [{"name": r.config.name, "role": r.config.role, "counters": r.counters.snapshot()}
                          for r in roles()]}

    server = control.ControlServer(config.control_socket or control.default_path(), {"status": status}, log)
    try:
        server.start()
    except OSError as exc:
        if config.control_socket:
            for role in roles():
                role.close()
            raise BindError(f"control socket {config.control_socket}: {exc} "
                            "(set [control] socket to a free path)") from None
        log.warning("no control socket: %s; `sidecar status` will not see this process "
                    "(set [control] socket = \"PATH\")", exc)
        return None
    log.info("control socket: %s", server.path)
    return server


def shutdown(roles: list[Role]) -> None:
    log.info("stopping: listeners closed, draining connections for up to %.0f s", DRAIN_TIMEOUT_S)
    for role in roles:
        role.stop_accepting()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    for role in roles:
        killed = role.drain(max(0.0, deadline - time.monotonic()))
        if killed:
            log.info("%s: closed %d connection(s) still open after the drain", role.config.name, killed)
        log.info("%s counters: %s", role.config.name, role.counters.line())
    log.info("stopped")
