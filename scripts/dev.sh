#!/usr/bin/env bash
# The demo: set up if needed, then broker + Redis + a worker + sample traffic (`pulse dev`).
# Extra arguments go to `pulse dev`, e.g. scripts/dev.sh --customers 5000 --workers 2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/pulse dev "$@"
