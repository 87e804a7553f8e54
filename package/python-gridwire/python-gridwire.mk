################################################################################
#
# python-gridwire
#
################################################################################

PYTHON_GRIDWIRE_VERSION = 0.1.0
PYTHON_GRIDWIRE_SITE = $(BR2_EXTERNAL_GRIDEDGE_PATH)/../apps/wire
PYTHON_GRIDWIRE_SITE_METHOD = local
PYTHON_GRIDWIRE_SETUP_TYPE = setuptools
PYTHON_GRIDWIRE_LICENSE = Apache-2.0
PYTHON_GRIDWIRE_LICENSE_FILES = LICENSE

$(eval $(python-package))
