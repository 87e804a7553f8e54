#!/bin/sh
# Buildroot post-build step shared by every gridedge board (runs before the
# board's own post-build script). Buildroot calls it with the target directory
# as $1 and exports GRIDEDGE_VERSION and GRIDEDGE_RAUC_KEYRING from
# br2-external/external.mk.
#
#  - /etc/gridedge/version and /usr/lib/os-release carry the git describe
#    version (the same string goes into the update bundle's manifest);
#  - /etc/rauc/system.conf from rauc/system.conf.in and the board's
#    /etc/gridedge/platform.conf (copied in by the board's overlay);
#  - /etc/rauc/keyring.pem, refused if it holds a private key;
#  - the gridedge service in /etc/inittab, respawned by BusyBox init;
#  - the /data mount point;
#  - a last check that no private key sits in /etc, /root or /data.
#
# Tests: tests/firmware/test_firmware_scripts.py runs it on a stand-in target.
set -eu

TARGET_DIR="$1"
COMMON_DIR="$(dirname "$0")"

fail() {
	echo "post-build: $*" >&2
	exit 1
}

[ -n "${GRIDEDGE_VERSION:-}" ] || fail "GRIDEDGE_VERSION is empty (br2-external/external.mk sets it from git describe)"
[ -n "${GRIDEDGE_RAUC_KEYRING:-}" ] || fail "GRIDEDGE_RAUC_KEYRING is not set: the RAUC CA certificate for the image (make dev-keys makes a development one)"
[ -r "$GRIDEDGE_RAUC_KEYRING" ] || fail "GRIDEDGE_RAUC_KEYRING=$GRIDEDGE_RAUC_KEYRING cannot be read"
if grep -q 'PRIVATE KEY' "$GRIDEDGE_RAUC_KEYRING"; then
	fail "$GRIDEDGE_RAUC_KEYRING holds a private key; the image takes only the CA certificate"
fi
grep -q 'BEGIN CERTIFICATE' "$GRIDEDGE_RAUC_KEYRING" || fail "$GRIDEDGE_RAUC_KEYRING holds no PEM certificate"

platform_conf="$TARGET_DIR/etc/gridedge/platform.conf"
[ -r "$platform_conf" ] || fail "$platform_conf is missing: the board's rootfs overlay must provide it"

# Version, for people (os-release) and for scripts (/etc/gridedge/version).
mkdir -p "$TARGET_DIR/etc/gridedge" "$TARGET_DIR/usr/lib"
echo "$GRIDEDGE_VERSION" >"$TARGET_DIR/etc/gridedge/version"
cat >"$TARGET_DIR/usr/lib/os-release" <<END
NAME=gridedge
ID=gridedge
ID_LIKE=buildroot
VERSION="$GRIDEDGE_VERSION (Buildroot ${BR2_VERSION:-unknown})"
VERSION_ID=$GRIDEDGE_VERSION
PRETTY_NAME="gridedge $GRIDEDGE_VERSION"
END
ln -sf ../usr/lib/os-release "$TARGET_DIR/etc/os-release"

# RAUC: configuration and keyring.
"$COMMON_DIR/mk-system-conf" "$platform_conf" "$TARGET_DIR/etc/rauc/system.conf"
install -D -m 0644 "$GRIDEDGE_RAUC_KEYRING" "$TARGET_DIR/etc/rauc/keyring.pem"

# The application, started and restarted by BusyBox init.
respawn='::respawn:/usr/libexec/gridedge/gridedge-service'
if ! grep -qxF "$respawn" "$TARGET_DIR/etc/inittab"; then
	printf '\n# gridedge, restarted whenever it exits (board/common/post-build.sh)\n%s\n' \
		"$respawn" >>"$TARGET_DIR/etc/inittab"
fi

mkdir -p "$TARGET_DIR/data"

# Nothing secret in the image: signing keys and unit keys live elsewhere.
secrets=$(grep -rlI -e '-----BEGIN [A-Z ]*PRIVATE KEY-----' \
	"$TARGET_DIR/etc" "$TARGET_DIR/root" "$TARGET_DIR/data" 2>/dev/null || true)
[ -z "$secrets" ] || fail "private keys in the image: $secrets"
