"""`sidecar run` with no config file: the built-in demo serves curl through our own SS pair."""

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time

from tests.helpers import Process, UdpEchoServer, require, socks5_udp_associate, udp_round_trips, wait_for_port


def test_curl_through_the_builtin_demo(tmp_path):
    require(shutil.which("curl") is not None, "curl is not installed")
    (tmp_path / "page.html").write_text("hello from the target\n")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    demo = Process([sys.executable, "-m", "sidecar", "run"], tmp_path / "demo.log")
    try:
        wait_for_port(1080)
        url = f"http://localhost:{web.server_address[1]}/page.html"
        out = subprocess.run(["curl", "-sS", "--max-time", "10", "--socks5-hostname", "127.0.0.1:1080", url],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "hello from the target\n"
    finally:
        log = demo.stop()
        web.shutdown()
    assert demo.proc.returncode == 0
    assert "built-in demo" in log and "stopped" in log
    assert "ss -> kcp ->" in log  # the log says which chain runs
    assert "Traceback" not in log


def test_udp_through_the_builtin_demo(tmp_path):
    """SOCKS5 UDP ASSOCIATE through the demo's chain (udp2raw and the datagram FEC stage when root)."""
    echo = UdpEchoServer()
    demo = Process([sys.executable, "-m", "sidecar", "run"], tmp_path / "demo.log")
    try:
        wait_for_port(1080)
        control, relay = socks5_udp_associate(1080)
        with control:
            payloads = [os.urandom(n) for n in (1, 100, 1200)]
            assert _round_trips(relay, echo.port, payloads) == payloads
    finally:
        log = demo.stop()
        echo.close()
    if os.geteuid() == 0:
        assert "udp2raw faketcp" in log and "connected to 127.0.0.1" in log
    assert "Traceback" not in log


def _round_trips(relay: tuple[str, int], port: int, payloads: list[bytes]) -> list[bytes]:
    """udp_round_trips, retried while the chain's udp2raw conn finishes its handshake."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return udp_round_trips(relay, port, payloads)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
