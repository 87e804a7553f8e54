################################################################################
#
# python-klein
#
################################################################################

PYTHON_KLEIN_VERSION = 24.8.0
PYTHON_KLEIN_SOURCE = klein-$(PYTHON_KLEIN_VERSION).tar.gz
PYTHON_KLEIN_SITE = $(GRIDEDGE_PYPI_FILES)/32/55/70e08b134db00f2e9b5c00f6df6e4f1c13b46041b15451e8f3c28bd74908
PYTHON_KLEIN_SETUP_TYPE = setuptools
PYTHON_KLEIN_LICENSE = MIT
PYTHON_KLEIN_LICENSE_FILES = LICENSE
# setup.py takes the version from incremental (use_incremental=True)
PYTHON_KLEIN_DEPENDENCIES = host-python-incremental

$(eval $(python-package))
