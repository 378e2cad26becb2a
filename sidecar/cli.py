"""The `sidecar` command: run or check a TOML config, or run one role from libev-style flags."""

import argparse
import base64
import json
import logging
import os
import sys
from typing import Any

from sidecar import __version__, cli_router, cli_udp2raw
from sidecar.config import DEFAULT_METHOD, LOG_LEVELS, Config, default_config, load_config, parse_config
from sidecar.errors import SidecarError
from sidecar.proto.ss_aead import METHODS
from sidecar.roles import build_role, chain

EXIT_CONFIG, EXIT_RUNTIME = 2, 1

DESCRIPTION = """\
sidecar: one low-memory daemon for the Shadowsocks (ss-local, ss-server, ss-tunnel, ss-redir),
kcptun (kcp-client, kcp-server) and udp2raw (u2r-client, u2r-server) roles, any number of them in one
process, configured by one TOML file.

  sidecar run                 run the built-in demo: SOCKS5 on 127.0.0.1:1080 through the
                              whole chain (ss -> kcp -> udp2raw as root) to an in-process
                              ss-server, on loopback
  sidecar run -c FILE         run every role in FILE (see conf/ for commented examples)
  sidecar check -c FILE       validate FILE and print what would listen where
  sidecar status              print each role's counters from the running sidecar
  sidecar ctl reload|stop     reload the config of (or stop) the running sidecar
  sidecar rules up|down -c FILE  ss-redir's firewall rules by hand
  sidecar genkey -m METHOD    print a random base64 key for `key = "..."`
  sidecar udp2raw -c|-s -l ADDR -r ADDR -k KEY [--raw-mode M] [-a]
                              one udp2raw side from udp2raw's own flags
  sidecar ss-local -s HOST -p PORT -l PORT -k PASSWORD -m METHOD [-u]
                              one role from shadowsocks-libev's own flags (also ss-server, ss-tunnel)
  sidecar kcp-client -l :12948 -r HOST:29900 --key KEY [--crypt aes --mode fast ...]
  sidecar kcp-server -l :29900 -t HOST:PORT --key KEY [--crypt aes --mode fast ...]
                              one role from kcptun's own flags
"""

# kcptun flags shared by both roles: (flags, TOML key, type, help); bool flags are switches.
KCP_FLAGS: tuple[tuple[tuple[str, ...], str, type, str], ...] = (
    (("--key",), "key", str, "pre-shared secret, the same on both ends (kcptun's default if omitted)"),
    (("--crypt",), "crypt", str, "aes (default), aes-128, aes-192, salsa20, blowfish, cast5, 3des, xor, none"),
    (("--mode",), "mode", str, "fast (default), normal, fast2, fast3, manual"),
    (("--mtu",), "mtu", int, "largest UDP payload (default 1350)"),
    (("--sndwnd",), "sndwnd", int, "send window in packets"),
    (("--rcvwnd",), "rcvwnd", int, "receive window in packets"),
    (("--datashard", "--ds"), "datashard", int, "FEC data shards (default 10; 0 with --ps 0: no FEC)"),
    (("--parityshard", "--ps"), "parityshard", int, "FEC parity shards (default 3)"),
    (("--dscp",), "dscp", int, "DSCP mark of the UDP packets (0-63)"),
    (("--nocomp",), "nocomp", bool, "turn snappy compression off (must match the other end)"),
    (("--acknodelay",), "acknodelay", bool, "send ACKs at once instead of at the next interval"),
    (("--nodelay",), "nodelay", int, "mode manual: 1 for the 30 ms minimum RTO"),
    (("--interval",), "interval", int, "mode manual: flush interval in ms"),
    (("--resend",), "resend", int, "mode manual: fast-retransmit after this many skipping ACKs (0: off)"),
    (("--nc",), "nc", int, "mode manual: 1 turns congestion control off"),
    (("--sockbuf",), "sockbuf", int, "UDP socket buffer bytes (default 4194304)"),
    (("--smuxver",), "smuxver", int, "smux version 1 (default) or 2, the same on both ends"),
    (("--smuxbuf",), "smuxbuf", int, "smux session receive buffer bytes (default 4194304)"),
    (("--streambuf",), "streambuf", int, "smux v2 per-stream receive window bytes (default 2097152)"),
    (("--keepalive",), "keepalive", int, "seconds between keepalives (default 10, at most 30)"),
    (("--tcp",), "tcp", bool, "kcptun's raw TCP mode: not supported (reported as a config error)"),
)
KCP_CLIENT_FLAGS: tuple[tuple[tuple[str, ...], str, type, str], ...] = (
    (("-l", "--localaddr"), "localaddr", str, "TCP address to listen on (default :12948)"),
    (("-r", "--remoteaddr"), "remoteaddr", str, "kcp-server address HOST:PORT"),
    (("--conn",), "conn", int, "UDP sessions to spread connections over (default 1)"),
    (("--autoexpire",), "autoexpire", int, "replace a session after this many seconds (default 0: never)"),
    (("--scavengettl",), "scavengettl", int, "seconds an expired session may keep its streams (default 600)"),
)
KCP_SERVER_FLAGS: tuple[tuple[tuple[str, ...], str, type, str], ...] = (
    (("-l", "--listen"), "listen", str, "UDP address to listen on (default :29900)"),
    (("-t", "--target"), "target", str, "where streams go: HOST:PORT or a unix socket path (default 127.0.0.1:12948)"),
)


def _libev_parser(sub: Any, role: str, help_text: str) -> None:
    p = sub.add_parser(role, help=help_text, description=f"{help_text} Flags mirror shadowsocks-libev's {role}.")
    if role == "ss-server":
        p.add_argument("-s", dest="server", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
        p.add_argument("--allow-private", dest="block_private", action="store_false", default=None,
                       help="let clients reach private and loopback addresses (blocked by default)")
    else:
        p.add_argument("-s", dest="server", required=True, help="ss-server host name or address")
        p.add_argument("-l", dest="local_port", type=int, required=True, help="local port to listen on")
        p.add_argument("-b", dest="local_address", default="127.0.0.1", help="local address (default 127.0.0.1)")
    p.add_argument("-p", dest="server_port", type=int, required=True, help="ss-server port")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("-k", dest="password", help="password")
    secret.add_argument("--key", dest="key", help="base64 key instead of a password")
    p.add_argument("-m", dest="method", default=DEFAULT_METHOD, help=f"cipher (default {DEFAULT_METHOD})")
    p.add_argument("-t", dest="timeout", type=int, default=60, help="idle timeout in seconds (default 60)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-u", dest="mode", action="store_const", const="tcp_and_udp", help="relay UDP too")
    mode.add_argument("-U", dest="mode", action="store_const", const="udp_only", help="relay UDP only")
    if role == "ss-tunnel":
        p.add_argument("-L", dest="tunnel_address", required=True, help="target host:port to forward to")
    p.add_argument("--no-delay", dest="no_delay", action="store_true", default=None, help="set TCP_NODELAY")
    p.add_argument("--reuse-port", dest="reuse_port", action="store_true", default=None, help="set SO_REUSEPORT")
    _log_level_option(p)


def _kcptun_parser(sub: Any, role: str, help_text: str) -> None:
    tool = "kcptun-client" if role == "kcp-client" else "kcptun-server"
    p = sub.add_parser(role, help=help_text, description=f"{help_text} Flags mirror {tool}'s; each maps to the "
                                                          "TOML key of the same name (see conf/).")
    own = KCP_CLIENT_FLAGS if role == "kcp-client" else KCP_SERVER_FLAGS
    for flags, key, kind, text in own + KCP_FLAGS:
        if kind is bool:
            p.add_argument(*flags, dest=key, action="store_true", default=None, help=text)
        else:
            p.add_argument(*flags, dest=key, type=kind, help=text)
    _log_level_option(p)


def _log_level_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=LOG_LEVELS, help="override the config's [log] level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the roles in a config file (or the built-in demo)",
                         description="Run every role in the config. With no -c, run the built-in demo: a SOCKS5 "
                                     "port on 127.0.0.1:1080 served through the whole chain (ss -> kcp -> udp2raw "
                                     "fake TCP when root, plain UDP otherwise) to an ss-server in this process "
                                     "(try: curl --socks5-hostname 127.0.0.1:1080 http://...). SIGTERM or "
                                     "SIGINT closes the listeners and drains connections for up to 5 s.")
    run.add_argument("-c", "--config", metavar="FILE", help="TOML config file (default: the built-in demo)")
    _log_level_option(run)
    check = sub.add_parser("check", help="validate a config and print the plan, binding nothing",
                           description="Validate the config and print what each role would listen on and forward "
                                       "to. Exits 2 with one line naming the key, the value and the fix if not valid.")
    check.add_argument("-c", "--config", metavar="FILE", help="TOML config file (default: the built-in demo)")
    status = sub.add_parser("status", help="print each role's counters from a running sidecar",
                            description="Ask a running sidecar (through its control socket) for each role's "
                                        "counters: bytes, connections, drops, auth failures, replays, ...")
    status.add_argument("--socket", metavar="PATH", help="control socket (default: the one `sidecar run` uses)")
    status.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    cli_udp2raw.add_parser(sub)
    cli_router.add_parsers(sub)
    genkey = sub.add_parser("genkey", help="print a random base64 key for a method")
    genkey.add_argument("-m", dest="method", default=DEFAULT_METHOD, choices=sorted(METHODS))
    for role, text in (("ss-local", "Run a SOCKS5 front that relays through an ss-server."),
                       ("ss-server", "Run a Shadowsocks server."),
                       ("ss-tunnel", "Forward one local port to a fixed target through an ss-server.")):
        _libev_parser(sub, role, text)
    _kcptun_parser(sub, "kcp-client", "Forward a local TCP port over KCP to a kcp-server (kcptun client).")
    _kcptun_parser(sub, "kcp-server", "Accept KCP sessions and forward their streams to a TCP target (kcptun server).")
    return parser


def _config_from_flags(args: argparse.Namespace) -> Config:
    if args.command in ("kcp-client", "kcp-server"):
        own = KCP_CLIENT_FLAGS if args.command == "kcp-client" else KCP_SERVER_FLAGS
        table = {key: getattr(args, key) for _, key, _, _ in own + KCP_FLAGS if getattr(args, key) is not None}
        return parse_config({args.command: [table]}, f"{args.command} flags")
    keys = ("server", "server_port", "local_port", "local_address", "password", "key", "method", "timeout",
            "mode", "tunnel_address", "no_delay", "reuse_port", "block_private")
    table = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    return parse_config({args.command: [table]}, f"{args.command} flags")


def _load(args: argparse.Namespace) -> Config:
    if args.command == "udp2raw":
        return cli_udp2raw.config_from_args(args)
    if args.command in ("ss-local", "ss-server", "ss-tunnel", "kcp-client", "kcp-server"):
        return _config_from_flags(args)
    return load_config(args.config) if args.config else default_config()


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def _check(config: Config) -> int:
    print(f"config OK ({config.source}); the plan:")
    roles = [build_role(role_config) for role_config in config.roles]
    chain.connect(roles)
    for role in roles:
        print(f"  {role.describe()}")
    return 0


def _run(config: Config, level: str | None, path: str | None) -> int:
    from sidecar.runner import serve  # gevent is imported only when something runs

    _setup_logging(level or config.log_level)
    if config.source.startswith("built-in"):
        logging.getLogger("sidecar").info("no config file given: running the %s", config.source)
    return serve(config, path)


def _status(args: argparse.Namespace) -> int:
    from sidecar import control

    path = args.socket or control.default_path()
    try:
        answer = control.request(path, "status")
    except (OSError, ValueError) as exc:
        print(f"sidecar: no running sidecar answers on {path} ({exc}); is it running? (--socket PATH)",
              file=sys.stderr)
        return EXIT_RUNTIME
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"sidecar pid {answer['pid']}, up {answer['uptime_s']:.0f} s, config: {answer['config']}")
    for role in answer["roles"]:
        counters = " ".join(f"{k}={v}" for k, v in role["counters"].items())
        print(f"  {role['name']} ({role['role']}): {counters}")
        if role.get("gauges"):
            print(f"    now: {' '.join(f'{k}={v}' for k, v in role['gauges'].items())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return EXIT_CONFIG
    if args.command == "status":
        return _status(args)
    if args.command in ("rules", "ctl"):
        try:
            return cli_router.run_rules(args) if args.command == "rules" else cli_router.run_ctl(args)
        except SidecarError as exc:
            print(f"sidecar: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if args.command == "udp2raw":
        try:
            done = cli_udp2raw.run_action(args)
        except SidecarError as exc:
            print(f"sidecar: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if done is not None:
            return done
    if args.command == "genkey":
        print(base64.b64encode(os.urandom(METHODS[args.method].key_len)).decode())
        return 0
    try:
        config = _load(args)
    except SidecarError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        return _check(config)
    try:
        return _run(config, args.log_level, getattr(args, "config", None))
    except SidecarError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
