################################################################################
#
# python-tubes
#
################################################################################

PYTHON_TUBES_VERSION = 0.2.1
PYTHON_TUBES_SOURCE = Tubes-$(PYTHON_TUBES_VERSION).tar.gz
PYTHON_TUBES_SITE = $(GRIDEDGE_PYPI_FILES)/11/99/7ffc9be5b3917cc91f388e5f74def363534d6537610bb1baec1a966b8cac
PYTHON_TUBES_SETUP_TYPE = setuptools
PYTHON_TUBES_LICENSE = MIT
PYTHON_TUBES_LICENSE_FILES = LICENSE

$(eval $(python-package))
