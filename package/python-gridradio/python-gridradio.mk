################################################################################
#
# python-gridradio
#
################################################################################

PYTHON_GRIDRADIO_VERSION = 0.1.0
PYTHON_GRIDRADIO_SITE = $(BR2_EXTERNAL_GRIDEDGE_PATH)/../apps/radio
PYTHON_GRIDRADIO_SITE_METHOD = local
PYTHON_GRIDRADIO_SETUP_TYPE = setuptools
PYTHON_GRIDRADIO_LICENSE = Apache-2.0
PYTHON_GRIDRADIO_LICENSE_FILES = LICENSE

$(eval $(python-package))
