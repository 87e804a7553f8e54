# U-Boot script of the Buildroot QEMU variant (vexpress-a9): the BeagleBone
# image's boot logic on a machine QEMU emulates. U-Boot's distro boot finds
# this script (boot.scr) on the first partition of the SD card.
#
# vexpress U-Boot keeps its own environment in NOR flash, which this image's
# Linux does not reach, so the A/B variables live in a raw area of the SD card
# instead (16 KiB at 1 MiB, block 0x800, in U-Boot's CRC-checked format):
# read here with 'env import -c', written back with 'env export -c', and
# reached from Linux by fw_printenv/fw_setenv through /etc/fw_env.config.
# Keep 0x800/0x20/0x4000 in sync with fw_env.config and genimage.cfg.
#
# The block between the "slot choice" markers is the same, line for line, as
# in board/beaglebone/boot.cmd and board/qemu-ci/boot.cmd (no setexpr; see
# there); tests/firmware/test_firmware_boot_script.py checks that.

setenv ab_addr ${kernel_addr_r}
mmc dev 0
if mmc read ${ab_addr} 0x800 0x20 && env import -c ${ab_addr} 0x4000 BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; then
	echo "A/B: BOOT_ORDER=${BOOT_ORDER} BOOT_A_LEFT=${BOOT_A_LEFT} BOOT_B_LEFT=${BOOT_B_LEFT}"
else
	echo "A/B: no valid variables on the SD card, starting from A"
fi

# --- slot choice: keep in sync with board/qemu-ci ---
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv ab_slot
for BOOT_SLOT in ${BOOT_ORDER}; do
	if test -n "${ab_slot}"; then
		true
	elif test "${BOOT_SLOT}" = "A" && test ${BOOT_A_LEFT} -gt 0; then
		if test ${BOOT_A_LEFT} -gt 2; then setenv BOOT_A_LEFT 2
		elif test ${BOOT_A_LEFT} -gt 1; then setenv BOOT_A_LEFT 1
		else setenv BOOT_A_LEFT 0; fi
		setenv ab_slot A
	elif test "${BOOT_SLOT}" = "B" && test ${BOOT_B_LEFT} -gt 0; then
		if test ${BOOT_B_LEFT} -gt 2; then setenv BOOT_B_LEFT 2
		elif test ${BOOT_B_LEFT} -gt 1; then setenv BOOT_B_LEFT 1
		else setenv BOOT_B_LEFT 0; fi
		setenv ab_slot B
	fi
done

if test -z "${ab_slot}"; then
	echo "A/B: no slot has attempts left; giving both 3 more"
	setenv BOOT_A_LEFT 3
	setenv BOOT_B_LEFT 3
fi
# --- end of slot choice ---

env export -c ${ab_addr} 0x4000 BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
mmc write ${ab_addr} 0x800 0x20
if test -z "${ab_slot}"; then
	reset
fi

if test "${ab_slot}" = "A"; then setenv ab_part 2; else setenv ab_part 3; fi
echo "A/B: booting slot ${ab_slot} (mmc 0:${ab_part}), BOOT_A_LEFT=${BOOT_A_LEFT} BOOT_B_LEFT=${BOOT_B_LEFT}"
setenv bootargs "console=ttyAMA0,115200 root=/dev/mmcblk0p${ab_part} rootfstype=ext4 ro rootwait rauc.slot=${ab_slot} panic=5"
if load mmc 0:${ab_part} ${kernel_addr_r} /boot/zImage && load mmc 0:${ab_part} ${fdt_addr_r} /boot/vexpress-v2p-ca9.dtb; then
	bootz ${kernel_addr_r} - ${fdt_addr_r}
fi
echo "A/B: slot ${ab_slot} did not start"
reset
