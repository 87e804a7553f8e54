#!/bin/sh
# Buildroot QEMU variant post-build step, after board/common/post-build.sh:
# the kernel and device tree must be inside the root file system, because
# boot.cmd loads them from the slot it boots.
set -eu

TARGET_DIR="$1"

for f in boot/zImage boot/vexpress-v2p-ca9.dtb etc/gridedge/platform.conf etc/fw_env.config; do
	if [ ! -s "$TARGET_DIR/$f" ]; then
		echo "post-build: /$f is missing from the root file system" >&2
		exit 1
	fi
done
