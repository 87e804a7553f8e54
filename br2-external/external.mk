# gridedge external tree: the packages at the top of the repository, and the
# values the board scripts need from the person building.

include $(sort $(wildcard $(BR2_EXTERNAL_GRIDEDGE_PATH)/../package/*/*.mk))

# Where PyPI keeps its files (the 'packages/' folder of its file host, or of a
# mirror of it), for the Python modules Buildroot lacks. The project names no
# download host in its repository: the person building passes it, as they pass
# keys. docs/firmware.md, "Building", gives the usual value.
GRIDEDGE_PYPI_FILES ?=

# Version of the firmware, in /etc/os-release and in the bundle's manifest.
# 'make image' passes it; a plain Buildroot build asks git.
GRIDEDGE_VERSION ?= $(shell git -C $(BR2_EXTERNAL_GRIDEDGE_PATH) describe --always --tags --dirty 2>/dev/null)

# RAUC material, as paths outside the repository (or in its ignored dev-keys/):
# the keyring (a CA certificate) goes into the image; the signing certificate
# and key only sign the bundle in board/common/post-image.sh.
GRIDEDGE_RAUC_KEYRING ?=
GRIDEDGE_RAUC_CERT ?=
GRIDEDGE_RAUC_KEY ?=

export GRIDEDGE_VERSION GRIDEDGE_RAUC_KEYRING GRIDEDGE_RAUC_CERT GRIDEDGE_RAUC_KEY

# Stop before hours of compiling, not at the end, when something is missing.
# Only for a build ('make' or 'make all'), so that configuring, show-info,
# legal-info and the like work without keys.
ifeq ($(BR2_PACKAGE_PYTHON_GRIDEDGE),y)
ifneq ($(filter all,$(or $(MAKECMDGOALS),all)),)
$(foreach v,GRIDEDGE_RAUC_KEYRING GRIDEDGE_RAUC_CERT GRIDEDGE_RAUC_KEY,\
	$(if $(wildcard $($(v))),,\
		$(error $(v)='$($(v))' is not a readable file. Pass the RAUC keyring (a CA certificate), the signing certificate and the signing key: see docs/firmware.md; 'make dev-keys' makes a development-only set)))
$(if $(GRIDEDGE_PYPI_FILES),,$(error GRIDEDGE_PYPI_FILES is empty: pass the URL of PyPI's file host 'packages' folder (see docs/firmware.md, Building)))
$(if $(GRIDEDGE_VERSION),,$(error GRIDEDGE_VERSION is empty: pass it or build from a git checkout))
endif
endif
