# shellcheck shell=busybox
# A stand-in for the parts of OpenWrt's rc.common, functions.sh and procd.sh that the init script
# calls, sourced before it by test_openwrt_init.py. Each call is appended to $STUB_LOG as the
# function name followed by its arguments in brackets, so argument boundaries can be checked.
# UCI is a list of section names in $STUB_SECTIONS; option OPT of section SEC comes from the
# variable uci_SEC_OPT, else the default in the validation spec. Types are NOT validated here:
# that is OpenWrt's validate_data, which does not run on this machine.

stub_record() {
	{
		printf '%s' "$1"
		shift
		for arg in "$@"; do printf ' [%s]' "$arg"; done
		echo
	} >>"$STUB_LOG"
}

config_load() { stub_record config_load "$@"; }

config_foreach() {
	local fn="$1" section
	shift 2
	for section in $STUB_SECTIONS; do "$fn" "$section" "$@"; done
}

uci_load_validate() {
	local _section="$3" _fn="$4" _spec _name _default _value
	shift 4
	if [ -z "$_section" ]; then
		stub_record validate "$@"
		return 0
	fi
	for _spec in "$@"; do
		_name="${_spec%%:*}"
		_default="${_spec##*:}"
		eval "_value=\${uci_${_section}_${_name}-\$_default}"
		eval "local $_name=\$_value"
	done
	"$_fn" "$_section" 0
}

procd_open_instance() { stub_record procd_open_instance "$@"; }
procd_set_param() { stub_record procd_set_param "$@"; }
procd_close_instance() { stub_record procd_close_instance "$@"; }
procd_add_reload_trigger() { stub_record procd_add_reload_trigger "$@"; }
procd_open_validate() { stub_record procd_open_validate "$@"; }
procd_close_validate() { stub_record procd_close_validate "$@"; }
logger() { stub_record logger "$@"; }
# The service user does not exist on this machine.
chown() { stub_record chown "$@"; }
