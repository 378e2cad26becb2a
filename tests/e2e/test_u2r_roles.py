"""The u2r-server role (from TOML) and `sidecar udp2raw -c` (udp2raw's flags) in two namespaces:
datagrams both ways, the weak-auth warning, the key never logged, the rules gone after stop."""

import os
import shutil
import sys
import threading
import time

import pytest

from tests.e2e.netns import NetnsPair, udp_socket
from tests.e2e.test_u2r_raw import _echo_loop, exchange, wait_line
from tests.helpers import Process, require

KEY = "role-test-key"
DATAGRAMS = 10_000
CIPHERS = ("aes128cbc", "aes128cfb", "xor", "none")
AUTHS = ("md5", "hmac_sha1", "crc32", "simple", "none")


@pytest.fixture
def ns():
    require(os.geteuid() == 0, "needs root for network namespaces, raw sockets and firewall rules")
    require(shutil.which("nft") is not None, "needs nftables")
    pair = NetnsPair(f"r{os.getpid() % 10000}")
    try:
        pair.create()
        yield pair
    finally:
        pair.delete()


@pytest.mark.parametrize(("mode", "cipher", "auth"), [("faketcp", "aes128cfb", "hmac_sha1"),
                                                      ("easy-faketcp", "aes128cbc", "md5"),
                                                      ("udp", "xor", "simple"),
                                                      ("icmp", "aes128cbc", "crc32")])
def test_roles_carry_udp_and_clean_up(ns, tmp_path, mode, cipher, auth):
    target = udp_socket(ns.server, ("127.0.0.1", 7000))
    threading.Thread(target=_echo_loop, args=(target,), daemon=True).start()
    config = tmp_path / "server.toml"
    config.write_text(f"""
[control]
enabled = false

[[u2r-server]]
listen = "{ns.SERVER_IP}:4096"
remote = "127.0.0.1:7000"
key = "{KEY}"
raw_mode = "{mode}"
cipher_mode = "{cipher}"
auth_mode = "{auth}"
""")
    server = Process(["ip", "netns", "exec", ns.server, sys.executable, "-m", "sidecar", "run", "-c", str(config)],
                     tmp_path / "server.log")
    wait_line(server, "sidecar ready")
    client = Process(["ip", "netns", "exec", ns.client, sys.executable, "-m", "sidecar", "udp2raw", "-c",
                      "-l", "127.0.0.1:3333", "-r", f"{ns.SERVER_IP}:4096", "-k", KEY, "--raw-mode", mode,
                      "--cipher-mode", cipher, "--auth-mode", auth, "-a"], tmp_path / "client.log")
    try:
        wait_line(client, "connected to")
        app = udp_socket(ns.client, ("127.0.0.1", 0))
        assert exchange(app, ("127.0.0.1", 3333), DATAGRAMS) == DATAGRAMS
        assert bool(ns.rules(ns.client) and ns.rules(ns.server)) == (mode != "easy-faketcp")
    finally:
        client_log, server_log = client.stop(), server.stop()
        target.close()
    assert not ns.rules(ns.client) and not ns.rules(ns.server)
    for log in (client_log, server_log):
        assert KEY not in log and "Traceback" not in log
    weak = "does not authenticate" in client_log
    assert weak == (auth != "hmac_sha1")


def test_every_cipher_and_auth_mode(ns, tmp_path):
    """All 20 cipher x auth pairs, 10,000 datagrams each: one process runs 20 u2r-server roles, another 20
    u2r-client roles."""
    target = udp_socket(ns.server, ("127.0.0.1", 7000))
    threading.Thread(target=_echo_loop, args=(target,), daemon=True).start()
    pairs = [(c, a) for c in CIPHERS for a in AUTHS]
    server_conf, client_conf = tmp_path / "servers.toml", tmp_path / "clients.toml"
    common = "[control]\nenabled = false\n"
    server_conf.write_text(common + "".join(f"""
[[u2r-server]]
listen = "{ns.SERVER_IP}:{4100 + i}"
remote = "127.0.0.1:7000"
key = "{KEY}"
raw_mode = "udp"
cipher_mode = "{c}"
auth_mode = "{a}"
""" for i, (c, a) in enumerate(pairs)))
    client_conf.write_text(common + "".join(f"""
[[u2r-client]]
listen = "127.0.0.1:{3400 + i}"
remote = "{ns.SERVER_IP}:{4100 + i}"
key = "{KEY}"
raw_mode = "udp"
cipher_mode = "{c}"
auth_mode = "{a}"
""" for i, (c, a) in enumerate(pairs)))
    run = [sys.executable, "-m", "sidecar", "run", "-c"]
    server = Process(["ip", "netns", "exec", ns.server, *run, str(server_conf)], tmp_path / "servers.log")
    wait_line(server, "sidecar ready")
    client = Process(["ip", "netns", "exec", ns.client, *run, str(client_conf)], tmp_path / "clients.log")
    try:
        deadline = time.monotonic() + 30
        while client.output().count("connected to") < len(pairs):  # every role's handshake done
            assert time.monotonic() < deadline and client.proc.poll() is None, client.output()
            time.sleep(0.1)
        app = udp_socket(ns.client, ("127.0.0.1", 0))
        for i, pair in enumerate(pairs):
            assert exchange(app, ("127.0.0.1", 3400 + i), DATAGRAMS) == DATAGRAMS, pair
    finally:
        client.stop()
        server.stop()
        target.close()
    assert not ns.rules(ns.client) and not ns.rules(ns.server)
