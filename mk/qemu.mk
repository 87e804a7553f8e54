# The CI firmware image (Debian 12 armhf, the Buildroot image's layout and boot/update logic)
# and its boot tests in qemu-system-arm. docs/firmware.md, "The CI image", explains it.
#
#   make ci-image       build output/ci-image/disk.img (downloads cached in output/cache)
#   make qemu-test      build it, then boot it in the tests of tests/qemu
#   make qemu-run       boot it with the console on this terminal (Ctrl-A X quits)
#   make ci-image-lock  re-resolve board/qemu-ci/packages.txt into packages.lock

CI_IMAGE_DIR := output/ci-image
CI_IMAGE := $(CI_IMAGE_DIR)/disk.img
# Everything the image is made of: a change to any of these rebuilds it.
CI_IMAGE_INPUTS := $(shell find board/qemu-ci board/common apps/wire/src apps/radio/src \
	apps/edge/src -type f -not -name '*.pyc' 2>/dev/null) apps/wire/pyproject.toml \
	apps/radio/pyproject.toml apps/edge/pyproject.toml board/qemu-ci/unit-python.txt

# Host tools of the image build and of the boot tests.
APT_PACKAGES += qemu-system-arm u-boot-qemu rauc genimage mtools dosfstools squashfs-tools \
	libubootenv-tool u-boot-tools cpio kmod busybox e2fsprogs binutils openssl \
	casync zstd
TEST_PREREQUISITES += ci-image

.PHONY: ci-image ci-image-lock qemu-test qemu-run

# .venv-unit (mk/unit-libs.mk): build.py checks unit-python.txt against gridedge's needs there.
ci-image: setup venv-unit $(CI_IMAGE) ## build the CI firmware image (Debian armhf) for the QEMU boot tests

$(CI_IMAGE): $(CI_IMAGE_INPUTS)
	$(PY) board/qemu-ci/build.py --out $(CI_IMAGE_DIR) --cache output/cache

ci-image-lock: ## re-resolve the CI image's Debian packages (board/qemu-ci/packages.lock)
	$(PY) board/qemu-ci/build.py --lock --cache output/cache

qemu-test: ci-image ## boot the CI image in QEMU: first boot, power cut, update, rollback
	$(PGCLUSTER) run -- $(PY) -m pytest tests/qemu -m qemu -v --log-cli-level=INFO $(PYTEST_ARGS)

qemu-run: ci-image ## boot a copy of the CI image with the console attached (Ctrl-A X quits)
	$(PY) board/qemu-ci/run_qemu.py --disk $(CI_IMAGE_DIR)/qemu-run.img --fresh-from $(CI_IMAGE)
