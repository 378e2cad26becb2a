"""`sidecar udp2raw`: one udp2raw side from udp2raw's own flags (`-c`/`-s`, `-l`, `-r`, `-k`, ...)."""

import argparse
from typing import Any

from sidecar.config import Config, parse_config

# (flags, TOML key, type, help); store_true flags have type None.
FLAGS: tuple[tuple[tuple[str, ...], str, Any, str], ...] = (
    (("-l",), "listen", str, "client: local UDP ip:port; server: raw ip:port to listen on"),
    (("-r",), "remote", str, "client: the server's raw ip:port; server: the UDP target ip:port"),
    (("-k", "--key"), "key", str, 'key (default "secret key"; cut at the first blank, as udp2raw does)'),
    (("--raw-mode",), "raw_mode", str, "faketcp (default), easy-faketcp, udp, icmp"),
    (("--cipher-mode",), "cipher_mode", str, "aes128cbc (default), aes128cfb, xor, none"),
    (("--auth-mode",), "auth_mode", str, "md5 (default), hmac_sha1 (the only one that authenticates), crc32, "
                                         "simple, none"),
    (("--seq-mode",), "seq_mode", int, "fake-TCP seq/ack behaviour 0..4 (default 3)"),
    (("--hb-mode",), "hb_mode", int, "0: empty heartbeats, 1: hb-len bytes (default)"),
    (("--hb-len",), "hb_len", int, "heartbeat length (default 1200)"),
    (("--source-ip",), "source_ip", str, "client source address (default: the route's)"),
    (("--source-port",), "source_port", int, "fixed client source port (tcp/udp modes)"),
    (("--mtu-warn",), "mtu_warn", int, "warn above this packet size (default 1375)"),
    (("--sock-buf",), "sock_buf", int, "socket buffers in KiB (default 1024)"),
    (("--dev",), "dev", str, "bind the raw receive socket to this interface"),
    (("--firewall",), "firewall", str, "auto (default: nft if present), nft, iptables"),
    (("-a", "--auto-rule"), "auto_rule", None, "add the firewall rule that keeps the kernel quiet, remove it at exit"),
    (("--keep-rule",), "keep_rule", None, "re-assert the rule every 20 s (implies -a)"),
    (("--fix-gro",), "fix_gro", None, "frame packets so GRO-merged ones can be split"),
    (("--disable-anti-replay",), "disable_anti_replay", None, "turn the anti-replay window off"),
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("udp2raw", help="run one udp2raw side from udp2raw's own flags",
                       description="Run a udp2raw client (-c) or server (-s). Flags mirror udp2raw's; each maps to "
                                   "the [[u2r-client]]/[[u2r-server]] TOML key of the same name. Raw modes need "
                                   "root (or CAP_NET_RAW and CAP_NET_ADMIN).")
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("-c", dest="side", action="store_const", const="u2r-client", help="client side")
    side.add_argument("-s", dest="side", action="store_const", const="u2r-server", help="server side")
    for flags, key, kind, text in FLAGS:
        if kind is None:
            p.add_argument(*flags, dest=key, action="store_true", default=None, help=text)
        else:
            p.add_argument(*flags, dest=key, type=kind, help=text)
    p.add_argument("-g", "--gen-rule", action="store_true", help="print the firewall rule to add by hand and exit")
    p.add_argument("--clear", action="store_true", help="remove every udp2raw-style rule and sidecar table, exit")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log level")


def config_from_args(args: argparse.Namespace) -> Config:
    table = {key: getattr(args, key) for _, key, _, _ in FLAGS if getattr(args, key) is not None}
    table.setdefault("auto_rule", bool(args.keep_rule))  # as udp2raw: no rules unless -a (or --keep-rule)
    return parse_config({args.side: [table]}, "udp2raw flags")


def run_action(args: argparse.Namespace) -> int | None:
    """-g and --clear act and exit; None when neither was given."""
    from sidecar.net import firewall

    if args.clear:
        removed = firewall.clear_all(args.firewall if args.firewall in ("nft", "iptables")
                                     else firewall.detect_backend())
        print(f"removed {removed} rule set(s)")
        return 0
    if args.gen_rule:
        role = config_from_args(args).roles[0]
        side = "client" if role.role == "u2r-client" else "server"
        ip, port = (role.remote.host, role.remote.port) if side == "client" else (
            None if role.listen.host == "0.0.0.0" else role.listen.host, role.listen.port)
        backend = role.firewall if role.firewall != "auto" else firewall.detect_backend()
        print(firewall.gen_rule(firewall.Pattern(side, role.raw_mode, ip, port), backend))
        return 0
    return None
