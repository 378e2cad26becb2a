"""The ss-manager UDP API adds and removes ports on a running server; counters survive kill -9."""

import json
import signal
import socket
import time

from tests.helpers import EchoServer, Process, echo_transfer, free_port, require_binary, socks5_connect, start_sidecar


def ask(port: int, line: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(line.encode(), ("127.0.0.1", port))
        return sock.recv(65536).decode()


def stat(port: int) -> dict[str, int]:
    reply = ask(port, "ping")
    assert reply.startswith("stat: "), reply
    return json.loads(reply[len("stat: "):])


def start(manager: int, stats_file, tmp_path, name: str) -> Process:
    proc = start_sidecar(config(manager, stats_file), tmp_path, name)
    deadline = time.monotonic() + 15
    while "sidecar ready" not in proc.output():  # UDP: a request sent before the bind is lost
        assert time.monotonic() < deadline and proc.proc.poll() is None, proc.output()
        time.sleep(0.05)
    return proc


def config(manager: int, stats_file) -> str:
    return f"""
[control]
enabled = false

[stats]
file = "{stats_file}"
interval_s = 1

[manager]
manager_address = "127.0.0.1:{manager}"
block_private = false  # the test target is on loopback
server = "127.0.0.1"
method = "aes-256-gcm"
"""


def test_add_use_remove_and_counters_survive_kill(tmp_path):
    ss_local = require_binary("ss-local")
    echo = EchoServer()
    manager, port, socks = free_port(), free_port(), free_port()
    stats_file = tmp_path / "counters.msgpack"
    proc = start(manager, stats_file, tmp_path, "first")
    client = None
    try:
        assert ask(manager, f'add: {{"server_port": {port}, "password": "panel-pw"}}') == "ok"
        assert json.loads(ask(manager, "list")) == [{"server_port": str(port), "password": "panel-pw"}]
        client = Process([ss_local, "-s", "127.0.0.1", "-p", str(port), "-l", str(socks), "-k", "panel-pw",
                          "-m", "aes-256-gcm"], tmp_path / "ss-local.log")
        time.sleep(0.5)
        with socks5_connect(socks, "127.0.0.1", echo.port) as sock:
            sent, received = echo_transfer(sock, 300_000)
            assert sent == received
        moved = stat(manager)[str(port)]
        assert moved >= 600_000
        time.sleep(2.5)  # more than one save interval
        proc.stop(signal.SIGKILL)
        proc = start(manager, stats_file, tmp_path, "second")
        assert ask(manager, f'add: {{"server_port": {port}, "password": "panel-pw"}}') == "ok"
        assert stat(manager)[str(port)] == moved  # the totals came back from disk
        assert ask(manager, f'remove: {{"server_port": {port}}}') == "ok"
        assert stat(manager) == {}
        assert ask(manager, "remove: {\"server_port\": 1}") == "err"
        assert ask(manager, "bogus") == "err"
    finally:
        if client is not None:
            client.stop()
        log = proc.stop()
        echo.close()
    assert "Traceback" not in log
