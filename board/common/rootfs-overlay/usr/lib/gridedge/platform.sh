# shellcheck shell=sh
# Shared shell helpers of the gridedge firmware: source this file, then call
# gridedge_load_platform.
#
# Used by the Buildroot image (board/beaglebone) AND by the CI image of the QEMU
# boot tests (board/qemu-ci), so it is plain POSIX sh that runs under BusyBox ash
# and dash. Everything board-specific (which disk holds /data, the RAUC
# compatible, the watchdog) comes from /etc/gridedge/platform.conf, which each
# board's overlay provides; nothing here names a BeagleBone device.
#
# platform.conf variables (shell assignments, no spaces around '='):
#   GRIDEDGE_DATA_DISK        whole disk holding the data partition (/dev/mmcblk0)
#   GRIDEDGE_DATA_PARTITION   its partition number on that disk (4)
#   GRIDEDGE_DATA_DEVICE      the partition's device node (/dev/mmcblk0p4)
#   GRIDEDGE_ROOTFS_A_DEVICE  slot A (rootfs.0), for RAUC's system.conf
#   GRIDEDGE_ROOTFS_B_DEVICE  slot B (rootfs.1)
#   GRIDEDGE_RAUC_COMPATIBLE  RAUC compatible string; bundles must match it
#   GRIDEDGE_WATCHDOG_DEVICE  optional, default /dev/watchdog
#   GRIDEDGE_WATCHDOG_TIMEOUT optional, seconds, default 60
#   GRIDEDGE_HEALTH_TIMEOUT   optional, seconds to become healthy, default 600
#
# Tests: tests/firmware/test_firmware_scripts.py (lint, parse) and the
# QEMU boot tests of tests/qemu/ (behaviour).

GRIDEDGE_PLATFORM_CONF="${GRIDEDGE_PLATFORM_CONF:-/etc/gridedge/platform.conf}"

# gridedge_log TAG MESSAGE...: to the console (stderr) and to syslog when it runs.
gridedge_log() {
	_tag="$1"
	shift
	echo "$_tag: $*" >&2
	logger -t "$_tag" -- "$*" 2>/dev/null || true
}

# gridedge_load_platform: read platform.conf and fill in the optional values.
# Fails (returns 1) when the file or a required value is missing, so a board
# that forgot one stops loudly instead of formatting the wrong disk.
gridedge_load_platform() {
	if [ ! -r "$GRIDEDGE_PLATFORM_CONF" ]; then
		gridedge_log gridedge "missing $GRIDEDGE_PLATFORM_CONF"
		return 1
	fi
	# shellcheck source=/dev/null
	. "$GRIDEDGE_PLATFORM_CONF"
	for _var in GRIDEDGE_DATA_DISK GRIDEDGE_DATA_PARTITION GRIDEDGE_DATA_DEVICE \
		GRIDEDGE_ROOTFS_A_DEVICE GRIDEDGE_ROOTFS_B_DEVICE GRIDEDGE_RAUC_COMPATIBLE; do
		eval "_val=\${$_var:-}"
		if [ -z "$_val" ]; then
			gridedge_log gridedge "$GRIDEDGE_PLATFORM_CONF does not set $_var"
			return 1
		fi
	done
	GRIDEDGE_WATCHDOG_DEVICE="${GRIDEDGE_WATCHDOG_DEVICE:-/dev/watchdog}"
	GRIDEDGE_WATCHDOG_TIMEOUT="${GRIDEDGE_WATCHDOG_TIMEOUT:-60}"
	GRIDEDGE_HEALTH_TIMEOUT="${GRIDEDGE_HEALTH_TIMEOUT:-600}"
	# Fixed by design, not per board: where the data partition is mounted
	# and where the application keeps its files on it.
	GRIDEDGE_DATA_MOUNT=/data
	GRIDEDGE_HOME=/data/gridedge
	GRIDEDGE_CONFIG=/data/gridedge/gridedge.toml
	GRIDEDGE_USER=gridedge
	# What data-setup made of the data partition this boot (state=mounted,
	# formatted, repaired, fault or error; device=; reason=), for mark-good,
	# the service wrapper and people at the console. docs/firmware.md, "/data
	# recovery rules".
	GRIDEDGE_DATA_STATUS=/run/gridedge/data-status
	export GRIDEDGE_DATA_DISK GRIDEDGE_DATA_PARTITION GRIDEDGE_DATA_DEVICE \
		GRIDEDGE_ROOTFS_A_DEVICE GRIDEDGE_ROOTFS_B_DEVICE \
		GRIDEDGE_RAUC_COMPATIBLE GRIDEDGE_WATCHDOG_DEVICE \
		GRIDEDGE_WATCHDOG_TIMEOUT GRIDEDGE_HEALTH_TIMEOUT \
		GRIDEDGE_DATA_MOUNT GRIDEDGE_HOME GRIDEDGE_CONFIG GRIDEDGE_USER \
		GRIDEDGE_DATA_STATUS
}

# gridedge_conf_get FILE KEY: print the value of KEY=value in FILE, a per-unit
# file on /data. The file is read, never sourced: what provisioning wrote there
# is data, not code that root would run.
gridedge_conf_get() {
	sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1 | sed -e 's/^"\(.*\)"$/\1/'
}

# gridedge_as_user COMMAND ARGS...: run COMMAND as the unprivileged gridedge
# user, in the foreground, replacing this shell. start-stop-daemon is in both
# BusyBox and Debian's dpkg and runs the program in the foreground unless told
# to background it; its exit status is the program's.
gridedge_as_user() {
	_exe="$1"
	shift
	HOME="$GRIDEDGE_HOME" exec start-stop-daemon -S -c "$GRIDEDGE_USER:$GRIDEDGE_USER" \
		-x "$_exe" -- "$@"
}
