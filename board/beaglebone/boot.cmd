# U-Boot script of the BeagleBone Black image: pick slot A or B the way RAUC's
# U-Boot integration expects, then boot the kernel and device tree inside that
# slot. Buildroot compiles it into boot.scr on the boot partition
# (BR2_TARGET_UBOOT_BOOT_SCRIPT_SOURCE); U-Boot's boot command only runs it.
#
# BOOT_ORDER lists the slots to try, BOOT_x_LEFT counts the attempts each has
# left; a boot uses one attempt and saves that BEFORE the kernel starts, so a
# hang or panic costs the slot its attempt. 'rauc status mark-good' in Linux
# gives them back (fw_setenv, same environment: raw MMC at 0x260000 and
# 0x280000, see uboot.fragment and /etc/fw_env.config). When no slot has
# attempts left both get 3 more and the board resets: better to keep trying
# than to stop in the boot loader of a unit on a pole.
#
# No setexpr (Debian's BeagleBone U-Boot lacks it, and the CI image shares the
# slot choice): the countdown is spelled out for the 3 attempts RAUC grants.
# The block between the "slot choice" markers is the same, line for line, as
# in the CI image's board/qemu-ci/boot.cmd (and board/qemu-vexpress/boot.cmd);
# tests/firmware/test_firmware_boot_script.py checks that and runs this script
# in U-Boot under QEMU.

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

saveenv
if test -z "${ab_slot}"; then
	reset
fi

if test "${ab_slot}" = "A"; then setenv ab_part 2; else setenv ab_part 3; fi
test -n "${kernel_addr_r}" || setenv kernel_addr_r 0x82000000
test -n "${fdt_addr_r}" || setenv fdt_addr_r 0x88000000
echo "A/B: booting slot ${ab_slot} (mmc 0:${ab_part}), BOOT_A_LEFT=${BOOT_A_LEFT} BOOT_B_LEFT=${BOOT_B_LEFT}"
setenv bootargs "console=ttyS0,115200n8 root=/dev/mmcblk0p${ab_part} rootfstype=ext4 ro rootwait rauc.slot=${ab_slot} panic=5 omap_wdt.early_enable=1"
if load mmc 0:${ab_part} ${kernel_addr_r} /boot/zImage && load mmc 0:${ab_part} ${fdt_addr_r} /boot/am335x-boneblack.dtb; then
	bootz ${kernel_addr_r} - ${fdt_addr_r}
fi
echo "A/B: slot ${ab_slot} did not start"
reset
