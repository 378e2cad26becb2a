"""`sidecar status` reads a running process's counters over its control socket."""

import json
import subprocess
import sys

from tests.helpers import EchoServer, echo_transfer, free_port, socks5_connect, start_sidecar


def test_status_shows_live_counters(tmp_path):
    echo = EchoServer()
    server, local = free_port(), free_port()
    sock_path = tmp_path / "control.sock"
    proc = start_sidecar(f"""
[control]
socket = "{sock_path}"

[[ss-server]]
block_private = false  # the test targets live on loopback or in 10.x
server = "127.0.0.1"
server_port = {server}
password = "pw"

[[ss-local]]
name = "home"
local_port = {local}
server = "127.0.0.1"
server_port = {server}
password = "pw"
""", tmp_path, wait_ports=(server, local))
    try:
        with socks5_connect(local, "127.0.0.1", echo.port) as sock:
            sent, received = echo_transfer(sock, 50_000)
            assert sent == received
        out = subprocess.run([sys.executable, "-m", "sidecar", "status", "--socket", str(sock_path), "--json"],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        home = next(r for r in answer["roles"] if r["name"] == "home")
        assert home["role"] == "ss-local" and home["counters"]["bytes_up"] >= 50_000
        text = subprocess.run([sys.executable, "-m", "sidecar", "status", "--socket", str(sock_path)],
                              capture_output=True, text=True, timeout=20).stdout
        assert "home (ss-local): connections=" in text
    finally:
        log = proc.stop()
        echo.close()
    assert not sock_path.exists()
    assert "Traceback" not in log


def test_status_without_a_process_says_so(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sidecar", "status", "--socket", str(tmp_path / "none.sock")],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1 and "no running sidecar answers" in out.stderr


def test_ctl_reload_and_stop(tmp_path):
    local = free_port()
    sock_path = tmp_path / "control.sock"
    config = f"""
[control]
socket = "{sock_path}"

[[ss-local]]
local_port = {local}
server = "127.0.0.1"
server_port = 9
password = "pw"
"""
    proc = start_sidecar(config, tmp_path, wait_ports=(local,))
    ctl = [sys.executable, "-m", "sidecar", "ctl", "--socket", str(sock_path)]
    out = subprocess.run([*ctl, "reload"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "reload" in out.stdout
    out = subprocess.run([*ctl, "stop"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0
    proc.proc.wait(15)
    log = proc.output()
    assert proc.proc.returncode == 0 and "reloaded" in log and "stopped" in log
