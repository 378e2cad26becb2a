"""ss-redir on a router namespace: a client with no proxy settings reaches a target through it.

    client ns (10.210.0.2) --LAN-- router ns (10.210.0.1 | 10.211.0.1) --WAN-- wan ns
                                   sidecar ss-redir, its own rules            ss-server 10.211.0.2,
                                                                              targets .3 and .4
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Process, counters, require

PEER = str(Path(__file__).with_name("redir_peer.py"))
TAG = str(os.getpid() % 100000)
CLIENT, ROUTER, WAN = f"rdc{TAG}", f"rdr{TAG}", f"rdw{TAG}"
LAN_DEV = f"rlan{TAG}"


def sh(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def ns(name: str, *args: str) -> str:
    return sh("ip", "netns", "exec", name, *args)


@pytest.fixture
def lab():
    require(os.geteuid() == 0, "network namespaces need root")
    require(shutil.which("nft") is not None, "nft is not installed (apt-get install nftables)")
    try:
        for name in (CLIENT, ROUTER, WAN):
            sh("ip", "netns", "add", name)
            ns(name, "ip", "link", "set", "lo", "up")
            ns(name, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        sh("ip", "link", "add", f"rc{TAG}", "netns", CLIENT, "type", "veth", "peer", "name", LAN_DEV, "netns", ROUTER)
        sh("ip", "link", "add", f"rwan{TAG}", "netns", ROUTER, "type", "veth", "peer", "name", f"w{TAG}",
           "netns", WAN)
        for name, dev, addrs in ((CLIENT, f"rc{TAG}", ["10.210.0.2/24"]), (ROUTER, LAN_DEV, ["10.210.0.1/24"]),
                                 (ROUTER, f"rwan{TAG}", ["10.211.0.1/24"]),
                                 (WAN, f"w{TAG}", ["10.211.0.2/24", "10.211.0.3/24", "10.211.0.4/24"])):
            for addr in addrs:
                ns(name, "ip", "addr", "add", addr, "dev", dev)
            ns(name, "ip", "link", "set", dev, "up")
        for name, dev, addrs in ((CLIENT, f"rc{TAG}", ["fd10::2/64"]), (ROUTER, LAN_DEV, ["fd10::1/64"]),
                                 (ROUTER, f"rwan{TAG}", ["fd11::1/64"]), (WAN, f"w{TAG}", ["fd11::2/64", "fd11::3/64",
                                                                                         "fd11::4/64"])):
            for addr in addrs:
                ns(name, "ip", "-6", "addr", "add", addr, "dev", dev, "nodad")
        ns(CLIENT, "ip", "route", "add", "default", "via", "10.210.0.1")
        ns(CLIENT, "ip", "-6", "route", "add", "default", "via", "fd10::1")
        ns(WAN, "ip", "route", "add", "10.210.0.0/24", "via", "10.211.0.1")
        ns(WAN, "ip", "-6", "route", "add", "fd10::/64", "via", "fd11::1")
        ns(ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        yield
    finally:
        for name in (CLIENT, ROUTER, WAN):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def start_in(name: str, config: str, tmp_path: Path, tag: str) -> Process:
    path = tmp_path / f"{tag}.toml"
    path.write_text(config)
    proc = Process(["ip", "netns", "exec", name, sys.executable, "-m", "sidecar", "run", "-c", str(path),
                    "--log-level", "debug"], tmp_path / f"{tag}.log")
    deadline = time.monotonic() + 15
    while "sidecar ready" not in proc.output():
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{tag} did not start:\n{proc.stop()}")
        time.sleep(0.1)
    return proc


SERVER = """
[control]
enabled = false

[[ss-server]]
block_private = false  # the test targets live on loopback or in 10.x
server = "10.211.0.2"
server_port = 8388
password = "router-test"
method = "aes-256-gcm"
mode = "tcp_and_udp"
"""

REDIR = f"""
[control]
enabled = false

[[ss-redir]]
local_port = 1081
server = "10.211.0.2"
server_port = 8388
password = "router-test"
method = "aes-256-gcm"
mode = "tcp_and_udp"
lan_interface = "{LAN_DEV}"
bypass_private = false   # this lab lives in 10.x; a router keeps the default (private ranges go direct)
"""


def rules_present() -> bool:
    return ("sidecar_redir" in ns(ROUTER, "nft", "list", "tables")
            or "SIDECAR_REDIR" in ns(ROUTER, "iptables", "-t", "nat", "-S"))


@pytest.mark.parametrize("firewall", ["nft", "iptables"])
def test_transparent_tcp_and_full_cone_udp(lab, tmp_path, firewall):
    target = subprocess.Popen(["ip", "netns", "exec", WAN, sys.executable, PEER, "target", "10.211.0.3:7000",
                               "10.211.0.3:7001", "10.211.0.4:7002"], stdout=subprocess.PIPE, text=True)
    server = start_in(WAN, SERVER, tmp_path, "server")
    redir = start_in(ROUTER, REDIR + f'firewall = "{firewall}"\n', tmp_path, "redir")
    try:
        assert target.stdout.readline().strip() == "ready"
        assert rules_present()
        out = ns(CLIENT, sys.executable, PEER, "client", "10.211.0.3:7000", "10.211.0.3:7001", str(20 * 1024 * 1024))
        report = json.loads(out)
        assert report["tcp_ok"]
        assert sorted(report["udp"]) == [["game-packet", "10.211.0.3:7001"],
                                         ["second:game-packet", "10.211.0.4:7002"]]  # full cone
        redir_log = redir.stop()
        assert not rules_present()
    finally:
        redir.stop()
        server.stop()
        target.kill()
    seen = target.stdout.read()
    assert "tcp-peer 10.210.0.2" not in seen and "tcp-peer" in seen  # the target never saw the client
    assert "udp-peer 10.210.0.2" not in seen and "udp-peer" in seen
    assert "firewall rules removed" in redir_log and "Traceback" not in redir_log


def test_acl_sends_listed_destinations_direct(lab, tmp_path):
    acl = tmp_path / "router.acl"
    acl.write_text("[proxy_all]\n[bypass_list]\n10.211.0.4/32   # a 'domestic' range: no proxy\n")
    target = subprocess.Popen(["ip", "netns", "exec", WAN, sys.executable, PEER, "target", "0.0.0.0:7000",
                               "10.211.0.3:7001", "10.211.0.4:7002"], stdout=subprocess.PIPE, text=True)
    server = start_in(WAN, SERVER, tmp_path, "server")
    redir = start_in(ROUTER, REDIR + f'acl = "{acl}"\n', tmp_path, "redir")
    try:
        assert target.stdout.readline().strip() == "ready"
        for address in ("10.211.0.4:7000", "10.211.0.3:7000"):
            assert ns(CLIENT, sys.executable, PEER, "tcp", address).strip() == "ok"
            time.sleep(0.2)
        log = redir.stop()
    finally:
        redir.stop()
        server.stop()
        target.kill()
    peers = [line.split()[1] for line in target.stdout.read().splitlines() if line.startswith("tcp-peer")]
    assert peers[0] == "10.211.0.1"  # direct: the target sees the router itself
    assert peers[1] not in ("10.211.0.1", "10.210.0.2")  # proxied: it sees the ss-server's side
    assert counters(log, "ss-redir[0]")["direct"] == 1


def test_rules_of_a_killed_router_are_replaced_and_removed(lab, tmp_path):
    redir = start_in(ROUTER, REDIR, tmp_path, "first")
    redir.proc.send_signal(signal.SIGKILL)
    redir.proc.wait()
    assert rules_present()  # kill -9 leaves them behind
    again = start_in(ROUTER, REDIR, tmp_path, "second")
    assert ns(ROUTER, "nft", "list", "tables").count("sidecar_redir") == 1
    log = again.stop()
    assert not rules_present() and "Traceback" not in log
    assert "fwmark" not in ns(ROUTER, "ip", "rule", "list")


def test_rules_command_up_and_down(lab, tmp_path):
    config = tmp_path / "router.toml"
    config.write_text(REDIR.replace(f'lan_interface = "{LAN_DEV}"', ""))
    run = ["ip", "netns", "exec", ROUTER, sys.executable, "-m", "sidecar", "rules"]
    printed = subprocess.run([*run, "print", "-c", str(config), "--lan", LAN_DEV], capture_output=True, text=True)
    assert "tproxy" in printed.stdout and LAN_DEV in printed.stdout
    assert subprocess.run([*run, "up", "-c", str(config), "--lan", LAN_DEV], capture_output=True).returncode == 0
    assert rules_present()
    assert subprocess.run([*run, "down", "-c", str(config), "--lan", LAN_DEV], capture_output=True).returncode == 0
    assert not rules_present()
    missing = subprocess.run([*run, "up", "-c", str(config)], capture_output=True, text=True)
    assert missing.returncode == 2 and "--lan" in missing.stderr


def test_ipv6_and_ipv4_through_one_dual_stack_listener(lab, tmp_path):
    target = subprocess.Popen(["ip", "netns", "exec", WAN, sys.executable, PEER, "target", "[::]:7000",
                               "[fd11::3]:7001", "[fd11::4]:7002"], stdout=subprocess.PIPE, text=True)
    server = start_in(WAN, SERVER, tmp_path, "server")
    redir = start_in(ROUTER, REDIR.replace("local_port = 1081", 'local_address = "::"\nlocal_port = 1081'),
                     tmp_path, "redir")
    try:
        assert target.stdout.readline().strip() == "ready"
        report = json.loads(ns(CLIENT, sys.executable, PEER, "client", "[fd11::3]:7000", "[fd11::3]:7001",
                               str(2 * 1024 * 1024)))
        assert report["tcp_ok"]
        assert sorted(report["udp"]) == [["game-packet", "[fd11::3]:7001"],
                                         ["second:game-packet", "[fd11::4]:7002"]]
        assert ns(CLIENT, sys.executable, PEER, "tcp", "10.211.0.3:7000").strip() == "ok"  # IPv4, same listener
        log = redir.stop()
    finally:
        redir.stop()
        server.stop()
        target.kill()
    seen = target.stdout.read()
    assert "fd10::2" not in seen and "10.210.0.2" not in seen  # the target never saw the client
    assert counters(log, "ss-redir[0]")["protocol_errors"] == 0
