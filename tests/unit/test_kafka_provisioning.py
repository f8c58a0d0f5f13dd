"""The Apache Kafka development broker's provisioning: one version, properties as the image reads them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from pulse.devstack import KAFKA_VERSION, KafkaBroker, kafka_props_from_env

POM = Path(__file__).resolve().parents[2] / "scripts" / "kafka" / "pom.xml"
NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def test_the_pom_fetches_the_version_the_starter_runs():
    # setup.sh passes KAFKA_VERSION to Maven; the pom's own default must not drift from it
    root = ET.parse(POM).getroot()
    assert root.findtext("m:properties/m:kafka.version", namespaces=NS) == KAFKA_VERSION
    artifacts = {d.findtext("m:artifactId", namespaces=NS) for d in root.iterfind("m:dependencies/m:dependency", NS)}
    assert {"kafka_2.13", "log4j-core", "log4j-slf4j2-impl", "slf4j-api"} <= artifacts


def test_kafka_env_names_map_to_properties_like_the_apache_kafka_image():
    env = {
        "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_LISTENER_NAME_INTERNAL_SASL__ENABLED___MECHANISMS": "x",
        "KAFKA_HEAP_OPTS": "-Xmx1g",  # a JVM option, not a property
        "PULSE_APP_ID": "ignored",
    }
    assert kafka_props_from_env(env) == {
        "log.dirs": "/var/lib/kafka/data",
        "offsets.topic.replication.factor": "1",
        "listener.name.internal.sasl_enabled-mechanisms": "x",
    }


def test_one_node_defaults_need_no_second_replica(tmp_path):
    props = KafkaBroker.default_properties(tmp_path, 9092, 9093)
    for name in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[name] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["log.dirs"] == str(tmp_path / "data")
