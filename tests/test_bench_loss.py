"""bench: the TUN link's packet loop, the goodput plot and the new table rows (no root, no contenders)."""

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench import kcp_suite, plots, ss_loss_suite, u2r_suite
from bench.impair import Impairment
from bench.tun_link import Link
from tests.helpers import require


@contextmanager
def running_link(impairment: Impairment) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A Link between two datagram socket pairs standing in for the TUN devices: (client end, server end)."""
    client, client_tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    server, server_tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (client_tun, server_tun):
        sock.setblocking(False)
    link = Link(client_tun.fileno(), server_tun.fileno(), impairment, seed=1)
    thread = threading.Thread(target=link.serve_forever, daemon=True)
    thread.start()
    try:
        yield client, server
    finally:
        link.request_stop()
        thread.join(2)
        for sock in (client, client_tun, server, server_tun):
            sock.close()


def test_link_delays_each_packet_both_ways() -> None:
    with running_link(Impairment(delay_ms=20.0)) as (client, server):
        server.settimeout(2)
        client.settimeout(2)
        start = time.monotonic()
        client.send(b"up")
        assert server.recv(100) == b"up"
        server.send(b"down")
        assert client.recv(100) == b"down"
        assert time.monotonic() - start >= 0.04


def test_link_drops_at_full_loss() -> None:
    with running_link(Impairment(loss=1.0)) as (client, server):
        server.settimeout(0.2)
        client.send(b"gone")
        with pytest.raises(TimeoutError):
            server.recv(100)


def test_goodput_plot_is_written(tmp_path, monkeypatch) -> None:
    require(importlib.util.find_spec("matplotlib") is not None,
            "matplotlib (the bench extra) is not installed: pip install '.[bench]'")
    monkeypatch.setattr(plots, "PLOT_DIR", tmp_path)
    series = {"a": {0.0: [10.0, 12.0], 0.05: [1.0]}, "b": {0.0: [8.0], 0.05: [0.5, 0.7]}}
    assert plots.goodput_vs_loss(series, "t", "g.png") == "bench/plots/g.png"
    assert (tmp_path / "g.png").stat().st_size > 0


def test_ss_loss_table_and_series() -> None:
    results = [ss_loss_suite.LossResult("libev", 0.05, [0.5, 0.7, 0.6], [41_000.0, 300_000.0])]
    assert ss_loss_suite.table(results)[2] == "| 5% | libev | 0.60 (0.50-0.70) | 300.0 / 300.0 |"
    assert ss_loss_suite.goodput(results) == {"libev": {0.05: [0.5, 0.7, 0.6]}}


def test_kcp_cpu_per_gb_and_series() -> None:
    r = kcp_suite.KcpResult("kcptun", "1% loss, 20 ms", 0.01, 20.0, [9.0], [1.0], cpu_s=2.0, bulk_cpu_s=1.5,
                            bulk_bytes=500_000_000)
    assert "| 3.0 |" in kcp_suite.table([r])[2]
    clean = kcp_suite.KcpResult("kcptun", "clean", mbps=[30.0], rtt_us=[1.0], bulk_bytes=1)
    assert kcp_suite.goodput([r, clean]) == {"kcptun": {0.01: [9.0]}}


def test_u2r_table_names_the_missing_udp2raw(monkeypatch) -> None:
    monkeypatch.delenv("UDP2RAW_BIN", raising=False)
    r = u2r_suite.U2rResult("sidecar", [100.0], {"10": [1.0], "100": [0.5]}, rss_kib=1024, cpu_s=1.0,
                            blast_cpu_s=1.0, echoed_bytes=500_000_000)
    lines = u2r_suite.table([r])
    assert lines[2] == "| sidecar | 100 / 100 | 10 | 50.0% / - / - | 1.0 | 1.0 | 1.0 |"
    assert lines[-1].startswith("| real udp2raw | not given (set UDP2RAW_BIN) |")
    assert [t.name for t in u2r_suite.tunnels()][0] == "direct UDP"
    monkeypatch.setenv("UDP2RAW_BIN", "/bin/true")
    assert sum(t.name.startswith("udp2raw") for t in u2r_suite.tunnels()) == len(u2r_suite.CASES)
