# The edge, wire and radio tests on the Python libraries a unit runs (docs/edge.md, "Library
# versions"): Buildroot's versions, pinned in board/qemu-ci/unit-python.txt, in a second
# virtualenv, .venv-unit, like a tox environment. 'make test' runs it.
#
#   make venv-unit       make .venv-unit: the apps (editable), the unit's pins, the test tools
#   make test-unit-libs  run tests/wire, tests/radio_codec, tests/edge, tests/radio/test_link.py in it

UNIT_VENV := .venv-unit
UNIT_PY := $(UNIT_VENV)/bin/python
UNIT_PINS := board/qemu-ci/unit-python.txt
# What runs on a unit, or speaks to it: the codecs, the edge, its radio link.
UNIT_LIBS_TESTS := tests/wire tests/radio_codec tests/edge tests/radio/test_link.py
TEST_PREREQUISITES += test-unit-libs

.PHONY: venv-unit test-unit-libs

venv-unit: $(UNIT_VENV)/.stamp

# One constraints file: the unit's pins, then constraints.txt for everything they leave out
# (test tools; the cloud and gridsim the tests talk to). pip refuses two pins of one package.
$(UNIT_VENV)/.stamp: $(UNIT_PINS) requirements/constraints.txt requirements/unit-tests.txt \
		$(foreach a,$(APPS),apps/$(a)/pyproject.toml)
	@rm -rf $(UNIT_VENV) && $(PYTHON) -m venv $(UNIT_VENV)
	@awk 'function key(line) { line = tolower(line); sub(/[ =<>!~;#].*/, "", line); \
		gsub(/[-_.]+/, "-", line); return line } \
		FNR == NR { if ($$0 !~ /^#/) pinned[key($$0)] = 1; print; next } \
		!($$0 ~ /^#/) && !(key($$0) in pinned)' $(UNIT_PINS) requirements/constraints.txt \
		> $(UNIT_VENV)/constraints.txt
	@$(UNIT_PY) -m pip install -q --upgrade pip
	@$(UNIT_PY) -m pip install -q -c $(UNIT_VENV)/constraints.txt -r requirements/unit-tests.txt \
		$(foreach a,$(APPS),-e apps/$(a))
	@touch $@
	@echo "venv-unit: $(UNIT_VENV) ready, with the libraries of $(UNIT_PINS)"

test-unit-libs: setup venv-unit ## run the edge, wire and radio tests on the unit's library versions
	$(UNIT_PY) -m pytest -m "not qemu" $(UNIT_LIBS_TESTS) $(PYTEST_ARGS)
