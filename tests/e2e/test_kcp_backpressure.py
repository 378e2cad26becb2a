"""Backpressure end to end: a target that stops reading stops the application's writes, memory stays flat,
and every byte arrives once the target reads again.

In smux v1 the bound is the session buffer (`smuxbuf`, 4 MiB) plus KCP's windows; in v2 the stream's
window (`streambuf`, 2 MiB). Kernel socket buffers on both TCP hops add a few MiB either way.
"""

import hashlib
import os
import socket
import threading
import time

import pytest

from tests.helpers import free_port, start_sidecar
from tests.kcp_helpers import wait_ready

TOTAL = 24 * 1024 * 1024
STALL_S = 3.0
MAX_IN_FLIGHT = 20 * 1024 * 1024
MAX_RSS_GROWTH_MB = 20


def rss_mb(proc) -> int:
    with open(f"/proc/{proc.proc.pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) // 1024


@pytest.mark.parametrize("smuxver", [1, 2])
def test_a_stalled_target_stops_the_sender_and_loses_nothing(smuxver, tmp_path):
    sink = socket.create_server(("127.0.0.1", 0))
    server_port, client_port = free_port(), free_port()
    common = f'key = "bp"\nsmuxver = {smuxver}'
    server = start_sidecar(f'[[kcp-server]]\nlisten = "127.0.0.1:{server_port}"\n'
                           f'target = "127.0.0.1:{sink.getsockname()[1]}"\n{common}\n', tmp_path, "server")
    wait_ready(server)
    client = start_sidecar(f'[[kcp-client]]\nlocaladdr = "127.0.0.1:{client_port}"\n'
                           f'remoteaddr = "127.0.0.1:{server_port}"\n{common}\n', tmp_path, "client",
                           wait_ports=(client_port,))
    try:
        sink.accept()[0].close()  # the stream of start_sidecar's port probe
        before = rss_mb(server), rss_mb(client)
        data = os.urandom(TOTAL)
        app = socket.create_connection(("127.0.0.1", client_port))
        pushed = [0]

        def push() -> None:
            view = memoryview(data)
            while pushed[0] < TOTAL:
                pushed[0] += app.send(view[pushed[0] : pushed[0] + 65536])

        threading.Thread(target=push, daemon=True).start()
        target, _ = sink.accept()
        time.sleep(STALL_S)
        stalled_at = pushed[0]
        growth = rss_mb(server) - before[0], rss_mb(client) - before[1]
        digest, got = hashlib.sha256(), 0
        while got < TOTAL and (chunk := target.recv(1 << 20)):
            digest.update(chunk)
            got += len(chunk)
        app.close()
        target.close()
    finally:
        client.stop()
        server.stop()
        sink.close()
    assert stalled_at < MAX_IN_FLIGHT, f"{stalled_at} bytes taken while the target read nothing"
    assert max(growth) < MAX_RSS_GROWTH_MB, growth
    assert got == TOTAL and digest.hexdigest() == hashlib.sha256(data).hexdigest()
