"""`sidecar rules up|down` (ss-redir's firewall rules by hand) and `sidecar ctl` (commands to a running sidecar)."""

import argparse
import sys
from typing import Any

from sidecar.config import SsRedirConfig, load_config
from sidecar.errors import SidecarError


def add_parsers(sub: Any) -> None:
    rules = sub.add_parser("rules", help="install or remove ss-redir's firewall rules by hand",
                           description="For each [[ss-redir]] in the config: REDIRECT LAN TCP and TPROXY LAN UDP to "
                                       "its port (nftables, or iptables without nft), with its bypass set. Not "
                                       "needed when the role has lan_interface: it then does this itself.")
    rules.add_argument("action", choices=("up", "down", "print"))
    rules.add_argument("-c", "--config", metavar="FILE", required=True, help="the config with the ss-redir roles")
    rules.add_argument("--lan", metavar="IFACE", help="LAN interface (default: each role's lan_interface)")
    ctl = sub.add_parser("ctl", help="send a command to a running sidecar",
                         description="reload: re-read the config file (as SIGHUP); stop: stop cleanly (as SIGTERM).")
    ctl.add_argument("action", choices=("reload", "stop"))
    ctl.add_argument("--socket", metavar="PATH", help="control socket (default: the one `sidecar run` uses)")


def run_rules(args: argparse.Namespace) -> int:
    from sidecar.roles.ss_redir import rules_for

    roles = [r for r in load_config(args.config).roles if isinstance(r, SsRedirConfig)]
    if not roles:
        raise SidecarError(f"{args.config} has no [[ss-redir]] role")
    for role in roles:
        lan = args.lan or role.lan_interface
        if not lan:
            raise SidecarError(f"{role.name}: no LAN interface; give --lan IFACE or set lan_interface")
        rules = rules_for(role, lan)
        if args.action == "print":
            print(rules.ruleset() if rules.backend == "nft" else "\n".join(map(" ".join, rules.iptables_commands())))
        elif args.action == "up":
            rules.up()
            print(f"{role.name}: rules up on {lan} ({rules.backend})")
        else:
            rules.down()
            print(f"{role.name}: rules removed ({rules.backend})")
    return 0


def run_ctl(args: argparse.Namespace) -> int:
    from sidecar import control

    path = args.socket or control.default_path()
    try:
        answer = control.request(path, args.action)
    except (OSError, ValueError) as exc:
        print(f"sidecar: no running sidecar answers on {path} ({exc}); is it running? (--socket PATH)",
              file=sys.stderr)
        return 1
    print(answer.get("result") or answer.get("error"))
    return 0 if "result" in answer else 1
