#!/usr/bin/env bash
# The test suite: unit, property and end-to-end tests (real redis-server and real brokers: the e2e and
# faults tests run on Tansu and on Apache Kafka; PULSE_TEST_BROKERS=tansu narrows a local run).
# In parallel (pytest-xdist, 5 processes): each broker's tests marked faults (tests/faults, and the e2e
# kills and outages) run in one process and its other e2e tests in another, each starting its broker
# once (tests/conftest.py's --dist loadgroup groups); the fifth runs the rest, file by file, the e2e and faults
# files first (those starting Kafka brokers of their own are files too), and the lanes that end early take files too. Those tests mostly wait (on workers, brokers, convergence), so side
# by side on 2 cores they take about as long as the longest group (docs/benchmarks.md).
# The summary says which broker each test ran on. Extra arguments go to pytest, e.g.
# scripts/test.sh -m "not e2e", or -n 0 for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -n 5 --dist loadgroup "$@"
