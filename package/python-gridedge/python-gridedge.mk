################################################################################
#
# python-gridedge
#
################################################################################

PYTHON_GRIDEDGE_VERSION = 0.1.0
PYTHON_GRIDEDGE_SITE = $(BR2_EXTERNAL_GRIDEDGE_PATH)/../apps/edge
PYTHON_GRIDEDGE_SITE_METHOD = local
PYTHON_GRIDEDGE_SETUP_TYPE = setuptools
PYTHON_GRIDEDGE_LICENSE = Apache-2.0
PYTHON_GRIDEDGE_LICENSE_FILES = LICENSE

# Its own unprivileged user, in group dialout for the radio module's UART.
# No password, no login shell; the home directory is on /data.
define PYTHON_GRIDEDGE_USERS
	gridedge -1 gridedge -1 * /data/gridedge - dialout gridedge application
endef

$(eval $(python-package))
