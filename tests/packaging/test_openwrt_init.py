"""The procd init script, run by busybox ash against stand-in procd/UCI functions (procd_stub.sh).

This is a shell-level stand-in for OpenWrt's procd, not the real one (which cannot run here): it
checks which instances the script would open and the exact command lines, and that `sidecar check`
(the real one) keeps an instance with a bad TOML from starting.
"""

import shlex
import stat
import subprocess
import sys
from pathlib import Path

from tests.packaging.tools import OPENWRT, REPO, system_tool

INIT = OPENWRT / "sidecar/files/sidecar.init"
STUB = Path(__file__).with_name("procd_stub.sh")


def _run_init(tmp_path: Path, function: str, uci: dict[str, str], sections: str = "main") -> list[str]:
    """Source the stub and the init script in busybox ash, call `function`; the recorded calls.

    The last one is `status [N]`, the function's exit status.
    """
    busybox = system_tool("busybox", "busybox-static")
    prog = tmp_path / "sidecar"
    prog.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m sidecar \"$@\"\n")
    prog.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    assignments = "".join(f"{name}={shlex.quote(value)}\n" for name, value in uci.items())
    script = (f". {shlex.quote(str(STUB))}\n. {shlex.quote(str(INIT))}\n"
              f"PROG={shlex.quote(str(prog))}\nRUN_DIR={shlex.quote(str(tmp_path / 'run'))}\n"
              f"{assignments}{function}\nstub_record status $?\n")
    env = {"PATH": "/usr/bin:/bin", "STUB_LOG": str(log), "STUB_SECTIONS": sections, "PYTHONPATH": str(REPO)}
    result = subprocess.run([busybox, "sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()


def _toml(tmp_path: Path, name: str = "sidecar.toml", text: str | None = None) -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else (REPO / "conf/ss-local.toml").read_text())
    return path


def test_enabled_section_starts_one_instance_with_the_checked_config(tmp_path: Path) -> None:
    toml = _toml(tmp_path)
    calls = _run_init(tmp_path, "start_service", {"uci_main_enabled": "1", "uci_main_config_file": str(toml)})
    run_conf = tmp_path / "run/main.toml"
    assert calls == [
        "config_load [sidecar]",
        f"chown [sidecar] [{run_conf}]",
        "procd_open_instance [main]",
        f"procd_set_param [command] [{tmp_path / 'sidecar'}] [run] [-c] [{run_conf}] [--log-level] [info]",
        f"procd_set_param [file] [{run_conf}]",
        "procd_set_param [respawn]",
        "procd_set_param [user] [sidecar]",
        "procd_set_param [limits] [nofile=4096 4096]",
        "procd_set_param [term_timeout] [10]",
        "procd_set_param [stdout] [1]",
        "procd_set_param [stderr] [1]",
        "procd_close_instance",
        "status [0]",
    ]
    assert run_conf.read_text() == toml.read_text()
    assert stat.S_IMODE(run_conf.stat().st_mode) == 0o600  # it may hold passwords


def test_uci_options_reach_the_command_line(tmp_path: Path) -> None:
    toml = _toml(tmp_path)
    calls = _run_init(tmp_path, "start_service", {"uci_main_enabled": "1", "uci_main_config_file": str(toml),
                                                  "uci_main_log_level": "debug", "uci_main_user": "root"})
    assert f"procd_set_param [command] [{tmp_path / 'sidecar'}] [run] [-c] [{tmp_path / 'run/main.toml'}] " \
           "[--log-level] [debug]" in calls
    assert "procd_set_param [user] [root]" in calls


def test_disabled_by_default(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, "start_service", {"uci_main_config_file": str(_toml(tmp_path))})
    assert calls == ["config_load [sidecar]", "status [0]"]


def test_bad_toml_is_logged_and_not_started(tmp_path: Path) -> None:
    bad = (REPO / "conf/ss-local.toml").read_text().replace('"aes-256-gcm"', '"aes-512-gcm"')
    toml = _toml(tmp_path, text=bad)
    calls = _run_init(tmp_path, "start_service", {"uci_main_enabled": "1", "uci_main_config_file": str(toml)})
    assert not any(call.startswith("procd_open_instance") for call in calls)
    logged = [call for call in calls if call.startswith("logger")]
    assert len(logged) == 1 and "main: not started" in logged[0] and "aes-512-gcm" in logged[0], calls
    assert not (tmp_path / "run/main.toml").exists()
    assert calls[-1] == "status [1]"


def test_bad_edit_keeps_the_last_good_config_running(tmp_path: Path) -> None:
    toml = _toml(tmp_path)
    uci = {"uci_main_enabled": "1", "uci_main_config_file": str(toml)}
    good = _run_init(tmp_path, "start_service", uci)
    good_copy = (tmp_path / "run/main.toml").read_text()
    toml.write_text(good_copy.replace('"aes-256-gcm"', '"aes-512-gcm"'))
    calls = _run_init(tmp_path, "start_service", uci)
    logged = [call for call in calls if call.startswith("logger")]
    assert len(logged) == 1 and "the last good config stays" in logged[0] and "aes-512-gcm" in logged[0]
    # The same instance as before, so procd leaves the running process alone on reload.
    assert [call for call in calls if not call.startswith("logger")] == [c for c in good if not c.startswith("chown")]
    assert (tmp_path / "run/main.toml").read_text() == good_copy


def test_one_instance_per_enabled_section(tmp_path: Path) -> None:
    first, second = _toml(tmp_path, "a.toml"), _toml(tmp_path, "b.toml")
    calls = _run_init(tmp_path, "start_service", {
        "uci_a_enabled": "1", "uci_a_config_file": str(first),
        "uci_b_enabled": "1", "uci_b_config_file": str(second),
        "uci_off_config_file": str(first),
    }, sections="a off b")
    assert [call for call in calls if call.startswith("procd_open_instance")] == [
        "procd_open_instance [a]", "procd_open_instance [b]"]


def test_triggers_reload_on_uci_change_and_declare_option_types(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, "service_triggers", {})
    assert calls[0] == "procd_add_reload_trigger [sidecar]"
    assert calls[1] == "procd_open_validate"
    assert calls[2].startswith("validate [enabled:bool:0] [config_file:file:/etc/sidecar/sidecar.toml]")
    assert calls[3:] == ["procd_close_validate", "status [0]"]


def test_init_script_is_an_rc_common_procd_script() -> None:
    text = INIT.read_text()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    assert "\nUSE_PROCD=1\n" in text and "\nSTART=99\n" in text
