"""Firewall rules that hide the raw traffic from the kernel (spec udp2raw.md 8), so it neither answers
the fake TCP with RSTs nor pings with echo replies: udp2raw's `-a`, `-g`, `--keep-rule` and `--clear`
with iptables, plus native nftables, chosen automatically (nft when it is installed and works).

Every rule records its owner (pid and process start time): in the INPUT rule's comment with iptables,
in the table name with nft. `clean_stale` removes the rules of owners that are gone (a kill -9), and
`Firewall.install` runs it first. `install` also registers `remove` with atexit; the role calls
`remove` on its own stop (SIGTERM/SIGINT reach it through the runner), atexit is the backstop.

Commands are run synchronously: they happen at start, stop and every 20 s with --keep-rule.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass

CHAIN_MARK = "udp2rawDwrW"  # udp2raw's own marker: its --clear and ours remove each other's rules
TABLE_PREFIX = "sidecar_u2r"
KEEP_RULE_INTERVAL_S = 20.0
_OWNER = re.compile(r"sidecar-u2r pid=(\d+) start=(\d+)")
_TABLE = re.compile(rf"^table ip ({TABLE_PREFIX}_(\d+)_(\d+)_[0-9a-f]+)$", re.M)

log = logging.getLogger("sidecar.firewall")


class FirewallError(OSError):
    """A firewall command failed; the message has the command and its stderr."""


@dataclass(frozen=True)
class Pattern:
    """What a rule matches (spec 8): the client drops what comes from the server's ip/port (icmp: echo
    replies from it); the server what comes to its listen port (icmp: echo requests), on `ip` if set."""

    side: str  # "client" | "server"
    raw_mode: str  # faketcp | easy-faketcp | udp | icmp
    ip: str | None  # client: the server's address; server: the listen address, None for 0.0.0.0
    port: int

    def iptables(self) -> list[str]:
        client = self.side == "client"
        args = ["-s" if client else "-d", self.ip] if self.ip else []
        if self.raw_mode == "icmp":
            return args + ["-p", "icmp", "--icmp-type", "0" if client else "8"]
        proto = "udp" if self.raw_mode == "udp" else "tcp"
        return args + ["-p", proto, "-m", proto, "--sport" if client else "--dport", str(self.port)]

    def nft(self) -> str:
        client = self.side == "client"
        addr = f"ip {'saddr' if client else 'daddr'} {self.ip} " if self.ip else ""
        if self.raw_mode == "icmp":
            return addr + f"icmp type {'echo-reply' if client else 'echo-request'}"
        proto = "udp" if self.raw_mode == "udp" else "tcp"
        return addr + f"{proto} {'sport' if client else 'dport'} {self.port}"


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise FirewallError(f"{shlex.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, None if there is no such process.

    With the pid it names a process uniquely, so a recycled pid does not keep stale rules alive.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int) -> bool:
    return process_start(pid) == start


def detect_backend() -> str:
    """'nft' when the nft tool is installed and can list the ruleset, else 'iptables'."""
    if shutil.which("nft") and _run(["nft", "list", "tables"], check=False).returncode == 0:
        return "nft"
    if shutil.which("iptables"):
        return "iptables"
    raise FirewallError("neither nft nor iptables is installed: install nftables or iptables, or run without -a")


def gen_rule(pattern: Pattern, backend: str = "iptables") -> str:
    """udp2raw's -g: the permanent rule to add by hand (printed, not run)."""
    if backend == "nft":
        table = f"{TABLE_PREFIX}_permanent"  # no owner in the name: clean_stale leaves it alone
        return (f"nft add table ip {table}\n"
                f"nft 'add chain ip {table} input {{ type filter hook input priority filter; }}'\n"
                f"nft add rule ip {table} input {pattern.nft()} drop")
    return shlex.join(["iptables", "-I", "INPUT", *pattern.iptables(), "-j", "DROP"])


class Firewall:
    """The DROP rule of one instance; `install`, `ensure` (--keep-rule) and `remove` (idempotent)."""

    def __init__(self, pattern: Pattern, instance_id: int, backend: str | None = None, wait_lock: bool = False) -> None:
        self.pattern = pattern
        self.backend = backend or detect_backend()
        self.pid = os.getpid()
        self.start = process_start(self.pid) or 0
        self.wait = ["-w"] if wait_lock else []
        self.chain = f"{CHAIN_MARK}_{instance_id:08x}_C0"
        self.table = f"{TABLE_PREFIX}_{self.pid}_{self.start}_{instance_id:08x}"
        self.comment = f"sidecar-u2r pid={self.pid} start={self.start}"
        self.installed = False

    def _input_rule(self, op: str) -> list[str]:
        return ["iptables", *self.wait, op, "INPUT", *self.pattern.iptables(), "-m", "comment", "--comment",
                self.comment, "-j", self.chain]

    def install(self) -> None:
        clean_stale(self.backend)
        if self.backend == "nft":
            script = (f"table ip {self.table} {{\n chain input {{\n  type filter hook input priority filter;"
                      f" policy accept;\n  {self.pattern.nft()} counter drop\n }}\n}}\n")
            proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise FirewallError(f"nft -f: {proc.stderr.strip()}")
        else:
            ipt = ["iptables", *self.wait]
            _run([*ipt, "-N", self.chain], check=False)  # may exist: the flush below empties it
            _run([*ipt, "-F", self.chain])
            _run([*ipt, "-A", self.chain, "-j", "DROP"])
            _run(self._input_rule("-I"))
        if not self.installed:
            atexit.register(self.remove)
        self.installed = True
        log.info("firewall: %s", self.describe())

    def present(self) -> bool:
        if self.backend == "nft":
            return _run(["nft", "list", "table", "ip", self.table], check=False).returncode == 0
        return _run(self._input_rule("-C"), check=False).returncode == 0

    def ensure(self) -> None:
        """--keep-rule: put the rule back if something (a firewall reload) removed it."""
        if self.installed and not self.present():
            log.warning("firewall: the rule went missing, adding it again")
            self.remove()
            self.install()

    def remove(self) -> None:
        if not self.installed:
            return
        self.installed = False
        if self.backend == "nft":
            _run(["nft", "delete", "table", "ip", self.table], check=False)
        else:
            _delete_chain(self._input_rule("-D"), self.chain, self.wait)

    def describe(self) -> str:
        if self.backend == "nft":
            return f"nft table ip {self.table}: {self.pattern.nft()} drop"
        return f"iptables -I INPUT {shlex.join(self.pattern.iptables())} -j {self.chain} (-j DROP)"


def _delete_chain(input_rule: list[str], chain: str, wait: list[str]) -> None:
    _run(input_rule, check=False)
    _run(["iptables", *wait, "-F", chain], check=False)
    _run(["iptables", *wait, "-X", chain], check=False)


def _iptables_rules() -> list[list[str]]:
    proc = _run(["iptables", "-S", "INPUT"], check=False)
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("-A INPUT")]


def _target(rule: list[str]) -> str:
    return rule[rule.index("-j") + 1] if "-j" in rule else ""


def clean_stale(backend: str) -> int:
    """Remove the rules whose owner process is gone; how many were removed."""
    removed = 0
    if backend == "nft":
        listing = _run(["nft", "list", "tables"], check=False).stdout
        for table, pid, start in _TABLE.findall(listing):
            if not _alive(int(pid), int(start)):
                _run(["nft", "delete", "table", "ip", table], check=False)
                removed += 1
    else:
        for rule in _iptables_rules():
            owner = _OWNER.search(" ".join(rule))
            if owner and not _alive(int(owner[1]), int(owner[2])):
                _delete_chain(["iptables", "-D", *rule[1:]], _target(rule), [])
                removed += 1
    if removed:
        log.warning("firewall: removed %d stale rule(s) left by dead processes", removed)
    return removed


def clear_all(backend: str) -> int:
    """udp2raw's --clear: remove every udp2raw-style chain and every sidecar table, whoever owns it."""
    removed = 0
    if backend == "nft":
        for table, _pid, _start in _TABLE.findall(_run(["nft", "list", "tables"], check=False).stdout):
            _run(["nft", "delete", "table", "ip", table], check=False)
            removed += 1
        return removed
    for rule in _iptables_rules():
        if CHAIN_MARK in _target(rule):
            _run(["iptables", "-D", *rule[1:]], check=False)
            removed += 1
    chains = _run(["iptables", "-S"], check=False).stdout.splitlines()
    for line in chains:
        if line.startswith("-N ") and CHAIN_MARK in line:
            with contextlib.suppress(FirewallError):
                _run(["iptables", "-F", line[3:]])
                _run(["iptables", "-X", line[3:]])
    return removed
