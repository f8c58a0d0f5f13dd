"""The broker's answers to topic creation and description, read per topic: what a cluster's ACLs or policies
refuse stops the start in one line (tests/e2e/test_kafka_acls.py runs them against a Kafka broker that enforces
ACLs); and what ``pulse topics --acls`` prints."""

from __future__ import annotations

import asyncio
import shlex
from types import SimpleNamespace

import pytest
from aiokafka.admin import NewTopic
from aiokafka.errors import NotControllerError, RequestTimedOutError

from pulse_config.settings import Settings
from streams.admin import TopicsRefused, acls, create_topics, router_topics, worker_topics


class FakeAdmin:
    """An admin client whose CreateTopics answer is given: (topic, error code, message) per topic."""

    def __init__(self, answers: list[tuple[str, int, str | None]]) -> None:
        self.answers = answers

    async def create_topics(self, new: list[NewTopic]) -> SimpleNamespace:
        return SimpleNamespace(topic_errors=self.answers)


def settings(**kw) -> Settings:
    return Settings(_env_file=None, broker_sasl_username="pulse", **kw)


def create(answers: list[tuple[str, int, str | None]]) -> None:
    new = [NewTopic(t, 4, 1) for t, _, _ in answers]
    asyncio.run(create_topics(FakeAdmin(answers), settings(), new))  # type: ignore[arg-type]


def test_created_and_created_meanwhile_are_no_error():
    create([("orders", 0, None), ("surveys", 36, "Topic 'surveys' already exists.")])


def test_refused_by_the_acls_names_the_principal_and_groups_the_topics_by_reason():
    with pytest.raises(TopicsRefused) as refused:
        create([("orders", 29, "Authorization failed."), ("surveys", 29, "Authorization failed."), ("x", 0, None)])
    text = str(refused.value)
    assert "do not let PULSE_BROKER_SASL_USERNAME='pulse' create topics: orders, surveys (Authorization failed)" in text
    assert "pulse topics" in text and "docs/operations.md" in text


def test_refused_by_a_policy_or_the_cluster_size_is_said_as_the_broker_said_it():
    with pytest.raises(TopicsRefused, match=r"refused to create topics: orders \(Replication factor: 3 larger"):
        create([("orders", 38, "Replication factor: 3 larger than available brokers: 1.")])


@pytest.mark.parametrize("code", [NotControllerError.errno, RequestTimedOutError.errno])
def test_a_retriable_answer_is_raised_for_the_start_ups_retry(code):
    from aiokafka.errors import KafkaError

    with pytest.raises(KafkaError) as raised:
        create([("orders", code, None)])
    assert raised.value.retriable


def test_pulse_topics_acls_cover_every_worker_topic_and_the_group():
    s = settings(app_id="cp")
    lines = acls(s, "User:pulse", "b:9092")
    topics = [shlex.split(line)[-1] for line in lines if "--topic" in line]
    assert topics == worker_topics(s) and len(set(topics)) == len(topics)
    assert "cp-customer_states-changelog" in topics and "cp-population" in topics and "cp-ticks" in topics
    [group] = [line for line in lines if "--group" in line]
    assert shlex.split(group)[-2:] == ["--group", "cp"] and "--operation Read" in group
    start = "kafka-acls.sh --bootstrap-server b:9092 --add --allow-principal User:pulse"
    assert all(line.startswith(start) for line in lines)
    assert not any("Create" in line for line in lines)


def test_pulse_topics_acls_for_the_router_cover_its_topics_and_its_group():
    s = settings(app_id="cp")
    lines = acls(s, "User:router", "b:9092", role="router")
    topics = [shlex.split(line)[-1] for line in lines if "--topic" in line]
    assert topics == router_topics(s) and s.topic_delivery_dead_letters in topics
    [group] = [line for line in lines if "--group" in line]
    assert shlex.split(group)[-2:] == ["--group", "cp-router"]


def test_pulse_topics_acls_for_the_console_cover_the_population_topic_and_its_group():
    s = settings(app_id="cp")
    lines = acls(s, "User:console", "b:9092", role="console")
    topics = [shlex.split(line)[-1] for line in lines if "--topic" in line]
    assert set(router_topics(s)) < set(topics) and "cp-population" in topics
    [group] = [line for line in lines if "--group" in line]
    assert shlex.split(group)[-2:] == ["--group", "cp-console"]
    custom = acls(settings(app_id="cp", console_group_id="desk"), "User:console", "b:9092", role="console")
    assert shlex.split(custom[-1])[-2:] == ["--group", "desk"]
