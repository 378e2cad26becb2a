"""SIGHUP applies an edited config: a new role starts, a changed password takes effect, and a
connection through an untouched role keeps flowing."""

import signal
import socket
import time

from tests.helpers import EchoServer, free_port, recv_exact, socks5_connect, start_sidecar, wait_for_port


def config(server: int, local: int, password: str, extra: str = "") -> str:
    return f"""
[control]
enabled = false

[[ss-server]]
block_private = false  # the test targets live on loopback or in 10.x
name = "edge"
server = "127.0.0.1"
server_port = {server}
password = "{password}"

[[ss-local]]
name = "home"
local_port = {local}
server = "127.0.0.1"
server_port = {server}
password = "{password}"
{extra}"""


def wait_for_log(proc, text: str, timeout: float = 10.0, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while proc.output().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in:\n{proc.output()}"
        time.sleep(0.1)


def test_sighup_reload(tmp_path):
    echo = EchoServer()
    server, local, tunnel = free_port(), free_port(), free_port()
    other_server = free_port()
    proc = start_sidecar(config(server, local, "one"), tmp_path, wait_ports=(server, local))
    try:
        kept = socks5_connect(local, "127.0.0.1", echo.port)
        kept.sendall(b"before")
        assert recv_exact(kept, 6) == b"before"
        # Add a tunnel role, and a second server pair with a new password; the first pair is untouched.
        def with_pair(password: str) -> str:
            return config(server, local, "one", f"""
[[ss-tunnel]]
name = "new-tunnel"
local_port = {tunnel}
tunnel_address = "127.0.0.1:{echo.port}"
server = "127.0.0.1"
server_port = {other_server}
password = "{password}"

[[ss-server]]
block_private = false  # the test targets live on loopback or in 10.x
name = "second"
server = "127.0.0.1"
server_port = {other_server}
password = "{password}"
""")

        for round_, password in enumerate(("two", "three"), 1):  # add the pair, then change its password
            (tmp_path / "sidecar.toml").write_text(with_pair(password))
            proc.proc.send_signal(signal.SIGHUP)
            wait_for_log(proc, "reloaded", count=round_)
            wait_for_port(tunnel)
            with socket.create_connection(("127.0.0.1", tunnel), timeout=10) as sock:
                sock.sendall(b"through the new role")
                assert recv_exact(sock, 20) == b"through the new role"
            kept.sendall(b"after")
            assert recv_exact(kept, 5) == b"after"  # the untouched connection kept flowing
        # A broken edit is rejected whole.
        (tmp_path / "sidecar.toml").write_text("[[ss-local]]\nlocal_prot = 1\n")
        proc.proc.send_signal(signal.SIGHUP)
        wait_for_log(proc, "reload rejected")
        kept.sendall(b"still")
        assert recv_exact(kept, 5) == b"still"
        kept.close()
    finally:
        log = proc.stop()
        echo.close()
    assert "Traceback" not in log
    assert "home changed" not in log and "edge changed" not in log
    assert "second changed" in log and "new-tunnel changed" in log
