#!/usr/bin/env bash
# The test suite: unit, property and end-to-end tests (real redis-server and real brokers: the e2e and
# faults tests run on Tansu and on Apache Kafka; PULSE_TEST_BROKERS=tansu narrows a local run).
# In parallel (pytest-xdist, 3 processes): one runs every test of Tansu, one every test of Apache
# Kafka, each starting its broker once (tests/conftest.py's --dist loadgroup groups); the third the
# rest, file by file. The brokers' halves mostly wait, so side by side they take about as long as one.
# The summary says which broker each test ran on. Extra arguments go to pytest, e.g.
# scripts/test.sh -m "not e2e", or -n 0 for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -n 3 --dist loadgroup "$@"
