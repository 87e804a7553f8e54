# Firmware: the Buildroot image of the grid edge unit (docs/firmware.md).
#
#   make dev-keys                  development-only RAUC keys in dev-keys/
#   make image BUILDROOT=DIR ...   BeagleBone Black: output/beaglebone/, then images/
#   make image-qemu BUILDROOT=DIR  the Buildroot QEMU (vexpress-a9) variant: output/qemu/
#   make firmware-check BUILDROOT=DIR
#                                  check br2-external against a Buildroot tree
#                                  (defconfigs, check-package, show-info); no build
#
# The offline checks of the tree are in tests/firmware/ and run in 'make test'.

# Debian tools for the offline checks: mkimage, genimage and what it calls,
# sfdisk to read the result, shellcheck and busybox for the shared scripts,
# QEMU and U-Boot to run the boot script, rauc and squashfs-tools for the
# bundle step, python3-magic and flake8 for Buildroot's check-package.
APT_PACKAGES += u-boot-tools genimage dosfstools mtools e2fsprogs fdisk shellcheck busybox \
	qemu-system-arm u-boot-qemu rauc squashfs-tools openssl python3-magic flake8

BUILDROOT ?=
BUILDROOT_SERIES := 2025.02
DEV_KEYS_DIR := dev-keys
GRIDEDGE_VERSION ?= $(shell git describe --always --tags --dirty 2>/dev/null)
GRIDEDGE_RAUC_KEYRING ?=
GRIDEDGE_RAUC_CERT ?=
GRIDEDGE_RAUC_KEY ?=
# PyPI's file host 'packages' folder (or a mirror): see br2-external/external.mk.
GRIDEDGE_PYPI_FILES ?=

# Expanded inside recipes, so the checks fire only when a firmware target runs.
define firmware-need-buildroot
$(if $(BUILDROOT),,$(error BUILDROOT is not set. The image is built by Buildroot $(BUILDROOT_SERIES).x \
(the long-term series; this tree is checked against $(BUILDROOT_SERIES).16). Get it with \
'git clone https://gitlab.com/buildroot.org/buildroot.git -b $(BUILDROOT_SERIES).16 ../buildroot' \
or the tarball from buildroot.org/downloads, then run 'make $@ BUILDROOT=../buildroot'. \
Building needs the internet: Buildroot downloads the sources of every package it builds))\
$(if $(wildcard $(BUILDROOT)/support/scripts/genimage.sh),,$(error BUILDROOT=$(BUILDROOT) is not a Buildroot tree))
endef

define firmware-need-keys
$(foreach v,GRIDEDGE_RAUC_KEYRING GRIDEDGE_RAUC_CERT GRIDEDGE_RAUC_KEY,\
	$(if $(wildcard $($(v))),,$(error $(v)='$($(v))' is not a readable file. The image needs the RAUC \
keyring (a CA certificate) and the bundle needs the signing certificate and key. For a development \
image: 'make dev-keys', then GRIDEDGE_RAUC_KEYRING=$(DEV_KEYS_DIR)/development-only-ca.cert.pem \
GRIDEDGE_RAUC_CERT=$(DEV_KEYS_DIR)/development-only-signing.cert.pem \
GRIDEDGE_RAUC_KEY=$(DEV_KEYS_DIR)/development-only-signing.key.pem)))\
$(if $(GRIDEDGE_VERSION),,$(error GRIDEDGE_VERSION is empty: build from a git checkout or pass it))\
$(if $(GRIDEDGE_PYPI_FILES),,$(error GRIDEDGE_PYPI_FILES is empty: pass the URL of the 'packages' folder \
of PyPI's file host, or of your mirror of it (docs/firmware.md, Building)))
endef

# $(1): defconfig name, $(2): folder under output/
define firmware-build
	$(firmware-need-buildroot)
	$(firmware-need-keys)
	$(MAKE) -C $(BUILDROOT) O=$(CURDIR)/output/$(2) BR2_EXTERNAL=$(CURDIR)/br2-external $(1)
	$(MAKE) -C $(BUILDROOT) O=$(CURDIR)/output/$(2) \
		GRIDEDGE_VERSION=$(GRIDEDGE_VERSION) \
		GRIDEDGE_PYPI_FILES=$(GRIDEDGE_PYPI_FILES) \
		GRIDEDGE_RAUC_KEYRING=$(abspath $(GRIDEDGE_RAUC_KEYRING)) \
		GRIDEDGE_RAUC_CERT=$(abspath $(GRIDEDGE_RAUC_CERT)) \
		GRIDEDGE_RAUC_KEY=$(abspath $(GRIDEDGE_RAUC_KEY))
	mkdir -p images
	cp output/$(2)/images/sdcard.img images/sdcard$(3).img
	cp output/$(2)/images/gridedge-update.raucb images/gridedge-update$(3).raucb
	@echo "firmware: images/sdcard$(3).img and images/gridedge-update$(3).raucb ($(GRIDEDGE_VERSION))"
endef

.PHONY: image image-qemu dev-keys firmware-check

image: ## build the BeagleBone image with Buildroot (BUILDROOT=DIR, key paths; see docs/firmware.md)
	$(call firmware-build,gridedge_beaglebone_defconfig,beaglebone,)

image-qemu: ## build the Buildroot QEMU (vexpress-a9) variant (BUILDROOT=DIR, key paths)
	$(call firmware-build,gridedge_qemu_arm_vexpress_defconfig,qemu,-qemu)

dev-keys: ## make DEVELOPMENT-ONLY RAUC signing keys in dev-keys/ (never for units in the field)
	board/common/mk-dev-keys $(DEV_KEYS_DIR)

firmware-check: ## check br2-external against a Buildroot tree (BUILDROOT=DIR); builds nothing
	$(firmware-need-buildroot)
	@tools/apt-ensure shellcheck python3-magic flake8
	$(PY) tests/firmware/buildroot_check.py $(BUILDROOT)
