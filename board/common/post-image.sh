#!/bin/sh
# Buildroot post-image step shared by every gridedge board: build the signed
# RAUC update bundle next to sdcard.img. Runs after support/scripts/genimage.sh
# (BR2_ROOTFS_POST_IMAGE_SCRIPT lists both). Buildroot passes the images
# directory as $1 and then BR2_ROOTFS_POST_SCRIPT_ARGS, which are genimage's
# and not ours, so they are ignored.
#
# The signing certificate and key come from GRIDEDGE_RAUC_CERT and
# GRIDEDGE_RAUC_KEY (exported by br2-external/external.mk); they are read
# here and never copied anywhere. The compatible string is the one in the
# image's own /etc/rauc/system.conf, so a bundle always fits the image it
# was built with; the version is GRIDEDGE_VERSION, as in /etc/os-release.
#
# Tests: tests/firmware/test_firmware_bundle.py builds a bundle with Debian's rauc.
set -eu

BINARIES_DIR="$1"
RAUC="${HOST_DIR:+$HOST_DIR/bin/}rauc"
BUNDLE="$BINARIES_DIR/gridedge-update.raucb"

fail() {
	echo "post-image: $*" >&2
	exit 1
}

for var in GRIDEDGE_RAUC_CERT GRIDEDGE_RAUC_KEY GRIDEDGE_RAUC_KEYRING GRIDEDGE_VERSION TARGET_DIR; do
	eval "value=\${$var:-}"
	[ -n "$value" ] || fail "$var is not set (see docs/firmware.md, 'Building')"
done
[ -r "$BINARIES_DIR/rootfs.ext4" ] || fail "$BINARIES_DIR/rootfs.ext4 is missing"

compatible=$(sed -n 's/^compatible=//p' "$TARGET_DIR/etc/rauc/system.conf")
[ -n "$compatible" ] || fail "no compatible= in $TARGET_DIR/etc/rauc/system.conf"

work="$BINARIES_DIR/rauc-bundle"
rm -rf "$work" "$BUNDLE"
mkdir -p "$work"
cp "$BINARIES_DIR/rootfs.ext4" "$work/rootfs.ext4"
cat >"$work/manifest.raucm" <<END
[update]
compatible=$compatible
version=$GRIDEDGE_VERSION
build=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y%m%dT%H%M%SZ)
description=gridedge firmware $GRIDEDGE_VERSION

[bundle]
format=verity

[image.rootfs]
filename=rootfs.ext4
END

"$RAUC" bundle \
	--cert="$GRIDEDGE_RAUC_CERT" \
	--key="$GRIDEDGE_RAUC_KEY" \
	--keyring="$GRIDEDGE_RAUC_KEYRING" \
	"$work" "$BUNDLE"
rm -rf "$work"
echo "post-image: $BUNDLE ($compatible, $GRIDEDGE_VERSION)"
