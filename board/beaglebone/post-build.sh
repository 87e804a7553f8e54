#!/bin/sh
# BeagleBone post-build step, after board/common/post-build.sh: the kernel and
# device tree must be inside the root file system (BR2_LINUX_KERNEL_INSTALL_TARGET),
# because boot.cmd loads them from the slot it boots, so an update replaces
# them together with everything else. Fail here rather than on the unit.
set -eu

TARGET_DIR="$1"

for f in boot/zImage boot/am335x-boneblack.dtb etc/gridedge/platform.conf etc/fw_env.config; do
	if [ ! -s "$TARGET_DIR/$f" ]; then
		echo "post-build: /$f is missing from the root file system" >&2
		exit 1
	fi
done
