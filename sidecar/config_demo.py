"""The built-in demo `sidecar run` runs with no file: the whole chain, both ends in this process, on loopback.

    SOCKS5 127.0.0.1:1080 -> ss-local -> kcp-client -> u2r-client  ···raw faketcp on lo···
        u2r-server -> kcp-server -> ss-server -> the target

As root (with nft or iptables for udp2raw's rules) the KCP packets and the Shadowsocks UDP ride
udp2raw's fake TCP, the UDP through the datagram FEC stage; otherwise KCP runs over plain UDP and
Shadowsocks UDP goes straight to the ss-server. Keys are fresh on every start: both ends live here.
"""

import base64
import os
import shutil
from typing import Any

KCP_PORT, SS_PORT, RAW_PORT = 18389, 18388, 18390


def can_use_raw() -> bool:
    return os.geteuid() == 0 and any(shutil.which(tool) for tool in ("nft", "iptables"))


def demo_doc(raw: bool) -> dict[str, Any]:
    def secret() -> str:
        return base64.urlsafe_b64encode(os.urandom(18)).decode()

    ss_key, kcp_key, u2r_key = secret(), secret(), secret()
    local: dict[str, Any] = {"name": "demo-socks", "local_address": "127.0.0.1", "local_port": 1080,
                             "mode": "tcp_and_udp", "password": ss_key, "via": "demo-kcp"}
    # block_private off: the demo's point is reaching local services (curl to a local web server).
    server: dict[str, Any] = {"name": "demo-ss", "password": ss_key, "mode": "tcp_and_udp", "via": "demo-kcps",
                              "block_private": False}
    # nocomp: what KCP carries is Shadowsocks ciphertext, which no compressor can shrink
    kcp_client: dict[str, Any] = {"name": "demo-kcp", "key": kcp_key, "nocomp": True}
    kcp_server: dict[str, Any] = {"name": "demo-kcps", "key": kcp_key, "nocomp": True}
    doc: dict[str, Any] = {"ss-local": [local], "ss-server": [server], "kcp-client": [kcp_client],
                           "kcp-server": [kcp_server]}
    if raw:
        fec = {"udp_fec": "2:2", "udp_fec_wait_ms": 10}
        local.update(udp_via="demo-raw", **fec)
        server.update(udp_via="demo-raws", **fec)
        kcp_client["via"], kcp_server["via"] = "demo-raw", "demo-raws"
        doc["u2r-client"] = [{"name": "demo-raw", "remote": f"127.0.0.1:{RAW_PORT}", "key": u2r_key,
                              "auth_mode": "hmac_sha1"}]
        doc["u2r-server"] = [{"name": "demo-raws", "listen": f"127.0.0.1:{RAW_PORT}", "key": u2r_key,
                              "auth_mode": "hmac_sha1"}]
    else:
        local.update(server="127.0.0.1", server_port=SS_PORT)
        server.update(server="127.0.0.1", server_port=SS_PORT)
        kcp_client["remoteaddr"] = f"127.0.0.1:{KCP_PORT}"
        kcp_server["listen"] = f"127.0.0.1:{KCP_PORT}"
    return doc


def describe(raw: bool) -> str:
    """The log line that says what the demo runs."""
    link = ("udp2raw faketcp on loopback (root), UDP through the datagram FEC stage" if raw
            else "plain UDP on loopback (not root, or no nft/iptables: no raw mode)")
    return (f"built-in demo: SOCKS5 127.0.0.1:1080 -> ss -> kcp -> {link} -> kcp -> ss-server, all in this "
            "process. Try: curl --socks5-hostname 127.0.0.1:1080 URL")
