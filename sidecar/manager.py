"""shadowsocks-libev's manager API (ss-manager's UDP protocol), so existing panels can drive sidecar.

Plain-text datagrams to `manager_address`:
    add: {"server_port": 8001, "password": "secret"[, "method": "aes-256-gcm"]}   -> ok | err
    remove: {"server_port": 8001}                                                 -> ok | err
    list                                                  -> [{"server_port": "8001", "password": ...}]
    ping                                                  -> stat: {"8001": 11370}   (bytes, both ways)
Unlike ss-manager, which starts one ss-server process per port, the servers run inside this process
as `ss-server` roles named `port-N`, with the [manager] table's address, method, mode and timeout.
"""

import json
import logging
from collections.abc import Callable

import gevent
from gevent.hub import get_hub

from sidecar.config import ManagerConfig, RoleConfig, parse_config
from sidecar.errors import SidecarError
from sidecar.net.sockets import family_of
from sidecar.net.udp_service import bind_datagram_socket
from sidecar.roles import Role, build_role

log = logging.getLogger("sidecar.manager")
_READ = 1


class Manager:
    """Serves the API; `on_added` and `on_removed` let the owner track the roles it runs."""

    def __init__(self, config: ManagerConfig, on_added: Callable[[Role], None],
                 on_removed: Callable[[Role], None]) -> None:
        self.config = config
        self.roles: dict[int, Role] = {}
        self._passwords: dict[int, str] = {}
        self._on_added, self._on_removed = on_added, on_removed
        address = config.address
        self._sock = bind_datagram_socket(family_of(address.host), (address.host, address.port), False)
        self._watcher = get_hub().loop.io(self._sock.fileno(), _READ)

    def start(self) -> None:
        self._watcher.start(self._on_readable)
        log.info("manager API on udp %s (add, remove, list, ping)", self.config.address)

    def _on_readable(self) -> None:
        while True:
            try:
                data, source = self._sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError:
                return
            gevent.spawn(self._answer, data, source)

    def _answer(self, data: bytes, source: tuple) -> None:
        try:
            reply = self.handle(data.decode("utf-8", "replace").strip())
        except Exception as exc:  # a bad request costs only its answer
            log.warning("manager request failed: %r", exc)
            reply = "err"
        try:
            self._sock.sendto(reply.encode(), source)
        except OSError as exc:
            log.debug("manager reply to %s lost: %s", source, exc)

    def handle(self, line: str) -> str:
        command, _, argument = line.partition(":")
        command = command.strip()
        if command == "ping":
            return "stat: " + json.dumps({str(p): r.counters["bytes_up"] + r.counters["bytes_down"]
                                          for p, r in self.roles.items()})
        if command == "list":
            return json.dumps([{"server_port": str(p), "password": self._passwords.get(p, "")} for p in self.roles])
        try:
            request = json.loads(argument)
            port = int(request["server_port"])
        except (ValueError, KeyError, TypeError):
            return "err"
        if command == "add":
            return self._add(port, request)
        if command == "remove":
            return self._remove(port)
        return "err"

    def _add(self, port: int, request: dict) -> str:
        if port in self.roles:
            self._remove(port)
        try:
            role_config = self._role_config(port, request)
            role = build_role(role_config)
            role.bind()
        except (SidecarError, OSError) as exc:
            log.warning("add port %d refused: %s", port, exc)
            return "err"
        role.start()
        self.roles[port] = role
        self._passwords[port] = str(request.get("password", ""))
        self._on_added(role)
        return "ok"

    def _role_config(self, port: int, request: dict) -> RoleConfig:
        cfg = self.config
        table = {"name": f"port-{port}", "server": cfg.server, "server_port": port, "mode": cfg.mode,
                 "timeout": cfg.timeout_s, "method": str(request.get("method", cfg.method)),
                 "block_private": cfg.block_private}
        if "key" in request:
            table["key"] = str(request["key"])
        else:
            table["password"] = str(request.get("password", ""))
        return parse_config({"ss-server": [table]}, "manager API").roles[0]

    def _remove(self, port: int) -> str:
        role = self.roles.pop(port, None)
        if role is None:
            return "err"
        self._passwords.pop(port, None)
        role.stop_accepting()
        gevent.spawn(role.drain, 5.0)
        self._on_removed(role)
        return "ok"

    def stop(self) -> None:
        self._watcher.stop()
        self._sock.close()

