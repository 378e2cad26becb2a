"""Chains in the config: what may ride what, and one clear line for every chain that cannot work."""

import subprocess
import sys

import pytest

from sidecar.config import parse_config
from sidecar.errors import ConfigError

CLIENT = {
    "ss-local": [{"name": "socks", "local_port": 1080, "password": "pw", "mode": "tcp_and_udp", "via": "kcp",
                  "udp_via": "raw"}],
    "kcp-client": [{"name": "kcp", "key": "k", "via": "raw"}],
    "u2r-client": [{"name": "raw", "remote": "10.0.0.2:4096", "key": "u"}],
}
SERVER = {
    "ss-server": [{"name": "ss", "password": "pw", "mode": "tcp_and_udp", "via": "kcps", "udp_via": "raws"}],
    "kcp-server": [{"name": "kcps", "key": "k", "via": "raws"}],
    "u2r-server": [{"name": "raws", "listen": "0.0.0.0:4096", "key": "u"}],
}


def changed(doc: dict, role: str, **changes) -> dict:
    table = {**doc[role][0], **changes}
    return {**doc, role: [{k: v for k, v in table.items() if v is not None}]}


def roles(doc: dict) -> dict:
    return {role.name: role for role in parse_config(doc, "test").roles}


def test_a_full_client_chain_drops_the_sockets_its_stages_replace():
    parsed = roles(CLIENT)
    assert parsed["socks"].server is None and parsed["socks"].via == "kcp" and parsed["socks"].udp_via == "raw"
    assert parsed["kcp"].listen is None and parsed["kcp"].remote is None  # no localaddr: streams only
    assert parsed["raw"].listen is None


def test_a_full_server_chain():
    parsed = roles(SERVER)
    assert parsed["ss"].listen is None
    assert parsed["kcps"].listen is None
    assert parsed["raws"].remote is None


def test_sub_chains_and_both_ends_in_one_file():
    assert roles({**CLIENT, **SERVER})
    ss_over_kcp = {"ss-local": [{"name": "s", "local_port": 1080, "password": "pw", "via": "kcp"}],
                   "kcp-client": [{"name": "kcp", "remoteaddr": "10.0.0.2:29900", "key": "k"}]}
    parsed = roles(ss_over_kcp)
    assert parsed["kcp"].listen is None and parsed["kcp"].remote.port == 29900
    udp_over_u2r = {"ss-local": [{"name": "s", "local_port": 1080, "password": "pw", "mode": "udp_only",
                                  "udp_via": "raw", "udp_fec": "4:2", "udp_fec_adaptive": True}],
                    "u2r-client": CLIENT["u2r-client"]}
    fec = roles(udp_over_u2r)["s"].udp_fec
    assert (fec.data, fec.parity, fec.adaptive, fec.wait_s) == (4, 2, True, 0.01)
    # a carrier keeps its own socket when the table gives one: TCP clients and in-process streams alike
    kept = roles(changed(CLIENT, "kcp-client", localaddr="127.0.0.1:12948"))
    assert kept["kcp"].listen.port == 12948


@pytest.mark.parametrize(("doc", "key", "words"), [
    (changed(CLIENT, "ss-local", via="kcpp"), "ss-local[0].via", "no role is named 'kcpp'"),
    (changed(CLIENT, "ss-local", via="raw"), "ss-local[0].via", "stream: name a [[kcp-client]]"),
    (changed(CLIENT, "ss-local", udp_via="kcp"), "ss-local[0].udp_via", "KCP carries streams only"),
    (changed(CLIENT, "kcp-client", via="socks"), "kcp-client[0].via", "name a [[u2r-client]]"),
    (changed(CLIENT, "ss-local", mode="tcp_only"), "ss-local[0].udp_via", "UDP is off"),
    (changed(CLIENT, "ss-local", udp_via=None), "ss-local[0].server", "UDP goes to an ss-server"),
    (changed(CLIENT, "ss-local", udp_fec="2-2"), "ss-local[0].udp_fec", "data:parity"),
    (changed(CLIENT, "ss-local", udp_fec_wait_ms=5), "ss-local[0].udp_fec_wait_ms", "udp_fec ="),
    ({**changed(CLIENT, "ss-local", udp_via=None, mode="tcp_only", udp_fec="2:2")}, "ss-local[0].udp_fec",
     "set udp_via too"),
    (changed(SERVER, "ss-server", via="kcp-nope"), "ss-server[0].via", "no role is named"),
    (changed(SERVER, "ss-server", udp_via="kcps"), "ss-server[0].udp_via", "name a [[u2r-server]]"),
    (changed(SERVER, "kcp-server", target="127.0.0.1:8388"), "kcp-server[0].target", "remove target"),
    (changed(SERVER, "u2r-server", remote="127.0.0.1:7000"), "u2r-server[0].remote", "remove remote"),
    ({"u2r-client": [{"remote": "10.0.0.2:4096"}]}, "u2r-client[0].listen", "unless a stage rides it"),
    ({"u2r-server": [{"listen": "0.0.0.0:4096"}]}, "u2r-server[0].remote", "unless a stage rides it"),
    ({**SERVER, "ss-server": [SERVER["ss-server"][0], {**SERVER["ss-server"][0], "name": "ss2"}]},
     "ss-server[1].via", "already takes the streams"),
    ({**CLIENT, "kcp-client": [{"name": "socks", "key": "k", "via": "raw"}]}, "kcp-client[0].name",
     "another role has this name"),
    ({"relay": [{"from": "in", "listen": "0.0.0.0:5000", "remote": "10.0.0.2:4000"}]}, "relay[0].listen",
     "exactly one of"),
    ({"relay": [{"listen": "0.0.0.0:5000", "to": "ss"}], "ss-server": [{"name": "ss", "server_port": 8388,
                                                                        "password": "pw"}]},
     "relay[0].to", "a relay sends over a [[u2r-client]]"),
])
def test_invalid_chains_name_the_key_and_the_fix(doc, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test")
    assert info.value.key == key, str(info.value)
    assert words in str(info.value)


def test_sidecar_check_prints_the_chain(tmp_path):
    path = tmp_path / "chain.toml"
    path.write_text('''
[[ss-local]]
name = "socks"
local_port = 1080
password = "pw"
via = "kcp"

[[kcp-client]]
name = "kcp"
key = "k"
via = "raw"

[[u2r-client]]
name = "raw"
remote = "10.0.0.2:4096"
''')
    result = subprocess.run([sys.executable, "-m", "sidecar", "check", "-c", str(path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "tcp over kcp" in result.stdout and "kcp over raw" in result.stdout
    assert "in-process stages -> raw faketcp 10.0.0.2:4096" in result.stdout
    path.write_text(path.read_text().replace('via = "raw"', 'via = "socks"'))
    result = subprocess.run([sys.executable, "-m", "sidecar", "check", "-c", str(path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "kcp-client[0].via" in result.stderr and "Traceback" not in result.stderr
