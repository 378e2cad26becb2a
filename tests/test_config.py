"""Config validation: every bad value gives one line naming the key, the value and the fix, before binding."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import default_config, parse_config
from sidecar.errors import ConfigError
from tests.helpers import free_port

GOOD_LOCAL = {"local_port": 1080, "server": "203.0.113.7", "server_port": 8388, "password": "pw"}


def with_local(**changes) -> dict:
    table = {**GOOD_LOCAL, **changes}
    return {"ss-local": [{k: v for k, v in table.items() if v is not None}]}


@pytest.mark.parametrize(("doc", "key", "fix_words"), [
    (with_local(local_prot=1081), "ss-local[0].local_prot", "did you mean 'local_port'"),
    (with_local(server_port="8388"), "ss-local[0].server_port", "expected an integer"),
    (with_local(local_port=70000), "ss-local[0].local_port", "from 1 to 65535"),
    (with_local(local_address="localhost:1080"), "ss-local[0].local_address", "IPv4 or IPv6"),
    (with_local(method="rc4-md5"), "ss-local[0].method", "aes-256-gcm"),
    (with_local(mode="both"), "ss-local[0].mode", "tcp_and_udp"),
    (with_local(password=None), "ss-local[0].password", "exactly one of"),
    (with_local(key="c2hvcnQ="), "ss-local[0].password", "exactly one of"),
    (with_local(password=None, key="c2hvcnQ="), "ss-local[0].key", "32 bytes"),
    (with_local(timeout=True), "ss-local[0].timeout", "expected a number"),
    ({"ss-locale": [GOOD_LOCAL]}, "ss-locale", "unknown section"),
    ({}, "(roles)", "at least one role"),
    ({"ss-local": [GOOD_LOCAL], "log": {"level": "loud"}}, "log.level", "debug, info"),
    ({"ss-tunnel": [{**GOOD_LOCAL, "tunnel_address": "8.8.8.8"}]}, "ss-tunnel[0].tunnel_address", "host:port"),
    ({"ss-local": [GOOD_LOCAL, {**GOOD_LOCAL, "local_address": "127.0.0.1"}]}, "ss-local[1].local_port",
     "already taken by ss-local[0]"),
    ({"ss-local": [{**GOOD_LOCAL, "local_address": "0.0.0.0"}],
      "ss-server": [{"server_port": 1080, "password": "pw"}]}, "ss-server[0].server_port", "already taken"),
])
def test_bad_config_names_key_value_and_fix(doc, key, fix_words):
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "test")
    message = str(info.value)
    assert info.value.key == key
    assert fix_words in message
    assert "\n" not in message


def test_udp_and_tcp_on_one_port_do_not_clash_across_protocols():
    doc = {"ss-local": [{**GOOD_LOCAL, "mode": "tcp_only"}],
           "ss-tunnel": [{**GOOD_LOCAL, "mode": "udp_only", "tunnel_address": "8.8.8.8:53"}]}
    assert len(parse_config(doc, "test").roles) == 2


def test_libev_defaults_are_mirrored():
    role = parse_config(with_local(), "test").roles[0]
    assert role.mode == "tcp_only" and role.timeout_s == 60 and role.cipher.method.name == "chacha20-ietf-poly1305"
    assert str(role.listen) == "127.0.0.1:1080"


@pytest.mark.parametrize("raw", [True, False])
def test_default_config_is_a_whole_chain_on_loopback_only(raw):
    config = default_config(raw)
    assert {r.listen.host for r in config.roles if r.listen is not None} == {"127.0.0.1"}
    kinds = {r.role for r in config.roles}
    assert {"ss-local", "ss-server", "kcp-client", "kcp-server"} <= kinds
    assert ({"u2r-client", "u2r-server"} <= kinds) == raw
    assert ("udp2raw faketcp" if raw else "plain UDP") in config.source


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, timeout=30)


def test_bad_file_exits_nonzero_with_one_line_and_binds_nothing(tmp_path):
    port = free_port()
    config = tmp_path / "bad.toml"
    config.write_text(f"""
[[ss-server]]
server_port = {port}
password = "pw"

[[ss-local]]
local_port = {port}
server = "127.0.0.1"
server_port = {port}
password = "pw"
method = "aes-512-gcm"
""")
    for command in ("run", "check"):
        out = run_cli(command, "-c", str(config))
        assert out.returncode == 2
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert "ss-local[0].method" in lines[0] and "aes-512-gcm" in lines[0] and "use one of" in lines[0]


def test_busy_port_fails_before_any_role_starts(tmp_path):
    busy, free = free_port(), free_port()
    config = tmp_path / "busy.toml"
    config.write_text(f"""
[[ss-server]]
server = "127.0.0.1"
server_port = {free}
password = "pw"

[[ss-local]]
local_port = {busy}
server = "127.0.0.1"
server_port = {free}
password = "pw"
""")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        out = run_cli("run", "-c", str(config))
    assert out.returncode == 1
    assert f"cannot listen on tcp 127.0.0.1:{busy}" in out.stderr and "Traceback" not in out.stderr
    assert "started" not in out.stderr


def test_missing_file_and_toml_syntax(tmp_path):
    out = run_cli("check", "-c", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and "cannot read the file" in out.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[[ss-local]\n")
    out = run_cli("check", "-c", str(broken))
    assert out.returncode == 2 and "not valid TOML" in out.stderr


def test_check_prints_the_plan(tmp_path):
    out = run_cli("check")
    assert out.returncode == 0
    assert "SOCKS5 (no auth) on tcp+udp 127.0.0.1:1080" in out.stdout


def test_help_explains_every_command():
    out = run_cli("--help")
    for word in ("run", "check", "genkey", "ss-local", "ss-server", "ss-tunnel"):
        assert word in out.stdout
    out = run_cli("ss-local", "--help")
    for flag in ("-s", "-p", "-l", "-k", "-m", "-u", "-U", "-t"):
        assert flag in out.stdout


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].joinpath("conf").glob("*.toml")))
def test_shipped_examples_are_valid(path):
    out = run_cli("check", "-c", str(path))
    assert out.returncode == 0, out.stderr
