# The local demo: everything on this machine, state kept under var/.

DEMO_DIR := var/demo

.PHONY: demo demo-stop

demo: setup ## run the whole system locally (Ctrl-C stops it)
	$(PY) tools/demo.py --state $(DEMO_DIR)

demo-stop: ## stop a demo PostgreSQL left running
	-$(PGCLUSTER) stop --dir $(DEMO_DIR)/pg
