# U-Boot script of the CI image: pick slot A or B the way RAUC's U-Boot integration expects.
#
# Debian's qemu_arm U-Boot keeps its own environment in flash that Linux cannot reach, so the
# A/B variables live in a raw disk area instead (@ENV_SIZE@ bytes at block @ENV_BLOCK@ of
# virtio 0, in U-Boot's CRC-checked format): this script reads it with 'env import -c' and
# writes it back with 'env export -c'; Linux (RAUC) and the host reach the same bytes with
# fw_printenv/fw_setenv and fw_env.config. build.py fills in the @...@ numbers from one place.
#
# The slot choice below MUST stay identical to the BeagleBone's script (board/beaglebone):
# BOOT_ORDER lists the slots to try, BOOT_x_LEFT counts the attempts each has left, a boot
# uses one attempt, 'rauc status mark-good' gives them back. No setexpr (Debian's
# BeagleBone U-Boot lacks it): the countdown is spelled out for the 3 attempts RAUC grants.

setenv ab_addr ${kernel_addr_r}
virtio scan
if virtio read ${ab_addr} @ENV_BLOCK@ @ENV_BLOCKS@ && env import -c ${ab_addr} @ENV_SIZE@ BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; then
	echo "A/B: BOOT_ORDER=${BOOT_ORDER} BOOT_A_LEFT=${BOOT_A_LEFT} BOOT_B_LEFT=${BOOT_B_LEFT}"
else
	echo "A/B: no valid variables on disk, starting from A"
fi

# --- slot choice: keep in sync with board/beaglebone ---
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

env export -c -s @ENV_SIZE@ ${ab_addr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
virtio write ${ab_addr} @ENV_BLOCK@ @ENV_BLOCKS@
if test -z "${ab_slot}"; then
	reset
fi

if test "${ab_slot}" = "A"; then setenv ab_part 2; else setenv ab_part 3; fi
echo "A/B: booting slot ${ab_slot} (virtio 0:${ab_part}), BOOT_A_LEFT=${BOOT_A_LEFT} BOOT_B_LEFT=${BOOT_B_LEFT}"
load virtio 0:${ab_part} ${kernel_addr_r} /boot/vmlinuz
load virtio 0:${ab_part} ${ramdisk_addr_r} /boot/initrd.img
setenv bootargs "console=ttyAMA0 root=/dev/vda${ab_part} rootfstype=ext4 ro rootwait rauc.slot=${ab_slot} panic=5 @EXTRA_BOOTARGS@"
bootz ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
echo "A/B: slot ${ab_slot} did not start"
reset
