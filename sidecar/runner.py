"""Run a validated config: bind every role first (all or nothing), serve, and stop cleanly on a signal."""

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event

from sidecar import control
from sidecar.config import Config, listeners
from sidecar.errors import SidecarError
from sidecar.manager import Manager
from sidecar.net.sockets import describe_os_error
from sidecar.reload import DRAIN_TIMEOUT_S, reload_roles
from sidecar.roles import Role, build_role, chain
from sidecar.stats_store import StatsStore

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
    chain.connect(roles)
    return roles


class Running:
    """What this process runs now: the config's roles (replaced by SIGHUP reloads) and the ports
    the manager API added."""

    def __init__(self, roles: list[Role], config_path: str | None) -> None:
        self.roles = roles
        self.managed: list[Role] = []
        self.config_path = config_path
        self.stats: StatsStore | None = None

    def all(self) -> list[Role]:
        return self.roles + self.managed

    def reload(self) -> None:
        """SIGHUP and `sidecar ctl reload`: apply the edited config file."""
        if self.config_path is None:
            log.warning("reload: no config file to reload (started without -c)")
            return
        self.roles = reload_roles(self.config_path, self.roles)[1]
        if self.stats is not None:
            for role in self.roles:
                self.stats.restore_once(role)


def serve(config: Config, config_path: str | None = None, ready: Event | None = None) -> int:
    """Run until SIGTERM or SIGINT (SIGHUP reloads `config_path`); returns the exit status."""
    running = Running(bind_all(config), config_path)
    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(running.reload))
    log.info("config: %s", config.source)
    stats = running.stats = start_stats(config, running)
    manager = start_manager(config, running, stats)
    actions = {"reload": lambda: gevent.spawn(running.reload), "stop": stop.set}
    control_server = start_control(config, running.all, actions)
    for role in running.roles:
        role.start()
    log.info("sidecar ready: %d role(s) running", len(running.roles))
    if ready is not None:
        ready.set()
    stop.wait()
    for service in (control_server, manager):
        if service is not None:
            service.stop()
    shutdown(running.all())
    if stats is not None:
        stats.stop()
    return 0


def start_stats(config: Config, running: Running) -> StatsStore | None:
    """Counters that survive restarts ([stats] file): saved totals are added back as roles start."""
    if config.stats_file is None:
        return None
    store = StatsStore(Path(config.stats_file), config.stats_interval_s,
                       lambda: [(r.config.name, r.counters) for r in running.all()])
    for role in running.roles:
        store.restore_once(role)
    store.start()
    log.info("counters saved to %s every %.0f s", config.stats_file, config.stats_interval_s)
    return store


def start_manager(config: Config, running: Running, stats: StatsStore | None) -> Manager | None:
    if config.manager is None:
        return None

    def added(role: Role) -> None:
        if stats is not None:
            stats.restore_once(role)
        running.managed.append(role)

    try:
        manager = Manager(config.manager, added, running.managed.remove)
    except OSError as exc:
        for role in running.roles:
            role.close()
        raise BindError(f"manager: cannot listen on udp {config.manager.address}: {describe_os_error(exc)}") from None
    manager.start()
    return manager


def start_control(config: Config, roles: Callable[[], list[Role]],
                  actions: dict[str, Callable[[], object]]) -> control.ControlServer | None:
    """The control socket for `sidecar status`. An explicit path that is taken is an error; the
    default path, when another sidecar already serves it, is skipped with a warning."""
    if not config.control_enabled:
        return None
    started = time.time()

    def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "uptime_s": round(time.time() - started, 1), "config": config.source,
                "roles": [{"name": r.config.name, "role": r.config.role, "counters": r.counters.snapshot(),
                           "gauges": r.gauges() if hasattr(r, "gauges") else {}} for r in roles()]}

    def act(name: str) -> control.Handler:
        def handler(_: dict[str, Any]) -> dict[str, Any]:
            actions[name]()
            return {"result": f"{name}: done" if name == "stop" else f"{name}: started (see the log)"}
        return handler

    handlers = {"status": status, **{name: act(name) for name in actions}}
    server = control.ControlServer(config.control_socket or control.default_path(), handlers, log)
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
