#!/usr/bin/env bash
# The test suite: unit, property and end-to-end tests (real redis-server and real brokers: the e2e and
# faults tests run on Tansu, then on Apache Kafka; PULSE_TEST_BROKERS=tansu narrows a local run).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not e2e".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
