# Benchmarks: each prints a readable table and, as its very last line, one JSON object.

BENCH_TARGETS := bench-wire bench-link bench-radio bench-ingest bench-refusals bench-api \
	bench-commands bench-pipeline bench-web bench-ota

.PHONY: bench $(BENCH_TARGETS)

bench: $(BENCH_TARGETS) ## run every benchmark

bench-wire: setup ## bytes per reading on the wire vs MQTT, Sparkplug B, CoAP, HTTPS, Sink; codec speed
	$(PY) bench/bench_wire.py

bench-link: setup ## a day of the real gridsim -> gridedge run -> gridcloud serve: bytes/reading on the socket, latency
	$(PGCLUSTER) run -- $(PY) bench/bench_link.py

bench-radio: setup ## radio frames parsed per second, edge CPU per record and peak RSS with 5,000 meters
	$(PY) bench/bench_radio.py

bench-ingest: setup ## ingest rate, one node and two behind HAProxy, vs raw PostgreSQL ceiling; memory per idle TLS edge
	$(PGCLUSTER) run -- $(PY) bench/bench_ingest.py

bench-refusals: setup ## bytes an edge spends in an hour of refusals (revoked, database down), old rule vs new
	$(PY) bench/bench_refusals.py

bench-api: setup ## HTTP API p50/p99 at 100 req/s and CSV export rate vs the same SQL, 10M readings
	$(PGCLUSTER) run -- $(PY) bench/bench_api.py

bench-commands: setup ## POST-to-outcome latency p50/p99 with 1,000 loadgen units + a real unit on gridsim; commands/s
	$(PGCLUSTER) run -- $(PY) bench/bench_commands.py
bench-pipeline: setup ## readings/s through aggregates, credit and alarms with 1 and 2 workers vs raw ingest
	$(PGCLUSTER) run -- $(PY) bench/bench_pipeline.py

bench-web: setup ## RSS the local web page adds and radio records/s with 10 live pages open, side by side
	$(PY) bench/bench_web.py

bench-ota: setup ci-image ## bytes to update a unit from v1 to v2 (gridedge changed): full bundle, our delta, casync
	$(PY) bench/bench_ota.py
