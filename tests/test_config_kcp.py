"""[[kcp-client]] / [[kcp-server]] tables and the kcptun-flag commands: kcptun's names, defaults and errors."""

import pytest

from sidecar.cli import _config_from_flags, build_parser
from sidecar.config import parse_config
from sidecar.config_kcp import Address
from sidecar.errors import ConfigError
from sidecar.proto.kcp_crypt import derive_key

CLIENT = {"remoteaddr": "203.0.113.7:29900"}


def client(**changes) -> dict:
    return {"kcp-client": [{**CLIENT, **changes}]}


def test_kcptun_defaults():
    cli = parse_config(client(), "test").roles[0]
    server = parse_config({"kcp-server": [{}]}, "test").roles[0]
    assert (str(cli.listen), str(cli.remote), cli.conn, cli.autoexpire_s, cli.scavengettl_s) == (
        "0.0.0.0:12948", "203.0.113.7:29900", 1, 0, 600)
    assert (str(server.listen), server.target) == ("0.0.0.0:29900", Address("127.0.0.1", 12948))
    assert cli.key == server.key == derive_key("it's a secrect") and cli.crypt == "aes"
    s = cli.settings
    assert (s.mtu, s.sndwnd, s.rcvwnd, s.datashard, s.parityshard, s.nocomp, s.smuxver) == (
        1350, 128, 512, 10, 3, False, 1)
    assert (s.nodelay, s.interval, s.resend, s.nc, s.keepalive_s) == (False, 30, 2, True, 10)  # mode fast
    assert (server.settings.sndwnd, server.settings.rcvwnd) == (1024, 1024)
    assert cli.tcp and not cli.udp and server.udp and not server.tcp


def test_manual_mode_uses_the_hidden_knobs_and_presets_ignore_them():
    manual = parse_config(client(mode="manual", nodelay=1, interval=15, resend=3, nc=1), "t").roles[0].settings
    fast3 = parse_config(client(mode="fast3", interval=99), "t").roles[0].settings
    assert (manual.nodelay, manual.interval, manual.resend, manual.nc) == (True, 15, 3, True)
    assert (fast3.nodelay, fast3.interval) == (True, 10)


def test_unix_target_and_fec_off():
    server = parse_config({"kcp-server": [{"target": "/run/app.sock", "datashard": 0, "parityshard": 0}]}, "t")
    role = server.roles[0]
    assert role.target == "/run/app.sock" and not role.settings.fec


@pytest.mark.parametrize(("doc", "key", "fix_words"), [
    (client(tcp=True), "kcp-client[0].tcp", "udp2raw"),
    (client(crypt="twofish"), "kcp-client[0].crypt", "salsa20"),
    (client(crypt="AES"), "kcp-client[0].crypt", "exact lower-case"),
    (client(mode="turbo"), "kcp-client[0].mode", "fast3"),
    (client(smuxver=3), "kcp-client[0].smuxver", "from 1 to 2"),
    (client(keepalive=60), "kcp-client[0].keepalive", "from 1 to 30"),
    (client(streambuf=8 << 20), "kcp-client[0].streambuf", "no larger than smuxbuf"),
    (client(mtu=9000), "kcp-client[0].mtu", "1500"),
    (client(datashard=200, parityshard=100), "kcp-client[0].parityshard", "at most 256"),
    (client(nocomp="yes"), "kcp-client[0].nocomp", "true or false"),
    (client(snmplog="/tmp/snmp.csv"), "kcp-client[0].snmplog", "counters"),
    (client(remoteaddr="vps"), "kcp-client[0].remoteaddr", "host:port"),
    (client(localaddr="localhost:1"), "kcp-client[0].localaddr", "IP address"),
    ({"kcp-client": [{}]}, "kcp-client[0].remoteaddr", "required"),
    ({"kcp-server": [{"listen": ":29900"}, {"listen": "127.0.0.1:29900"}]}, "kcp-server[1].listen",
     "already taken by kcp-server[0]"),
    ({"kcp-client": [{**CLIENT, "localaddr": "127.0.0.1:1080"}],
      "ss-local": [{"local_port": 1080, "server": "203.0.113.7", "server_port": 8388, "password": "pw"}]},
     "kcp-client[0].localaddr", "already taken by ss-local[0]"),
])
def test_bad_values_name_key_value_and_fix(doc, key, fix_words):
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test")
    assert info.value.key == key
    assert fix_words in str(info.value)


def test_a_kcp_server_and_an_ss_role_share_a_port_number_on_different_protocols():
    doc = {"kcp-server": [{"listen": "127.0.0.1:8388"}],
           "ss-server": [{"server": "127.0.0.1", "server_port": 8388, "password": "pw"}]}
    assert len(parse_config(doc, "test").roles) == 2


def test_kcptun_flags_map_onto_the_toml_keys():
    args = build_parser().parse_args(["kcp-client", "-l", "127.0.0.1:4000", "-r", "198.51.100.1:4000", "--key",
                                      "s3", "--crypt", "salsa20", "--ds", "5", "--ps", "2", "--nocomp",
                                      "--smuxver", "2", "--conn", "4", "--mode", "fast2"])
    role = _config_from_flags(args).roles[0]
    assert (str(role.listen), str(role.remote), role.crypt, role.conn) == (
        "127.0.0.1:4000", "198.51.100.1:4000", "salsa20", 4)
    s = role.settings
    assert (s.datashard, s.parityshard, s.nocomp, s.smuxver, s.interval) == (5, 2, True, 2, 20)
    server = _config_from_flags(build_parser().parse_args(["kcp-server", "-t", "127.0.0.1:22"])).roles[0]
    assert str(server.target) == "127.0.0.1:22" and str(server.listen) == "0.0.0.0:29900"
