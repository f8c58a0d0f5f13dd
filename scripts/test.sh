#!/usr/bin/env bash
# The test suite: unit, property and end-to-end tests (real Tansu broker and redis-server).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not e2e".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
