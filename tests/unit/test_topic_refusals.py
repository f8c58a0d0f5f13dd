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
from streams import admin
from streams.admin import TopicsRefused, _listed, acls, create_topics, router_topics, worker_topics


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


class NodesAdmin:
    """An admin client whose DescribeTopics answers come in turn, as the nodes of a cluster answer from their own
    metadata caches: one call's answer per list, each topic absent from it unknown (error 3, no partitions)."""

    def __init__(self, answers: list[dict[str, dict]]) -> None:
        self.answers = answers
        self.asked: list[list[str]] = []

    async def describe_topics(self, topics: list[str]) -> list[dict]:
        self.asked.append(list(topics))
        answer = self.answers[min(len(self.asked), len(self.answers)) - 1]
        unknown = {"error_code": 3, "partitions": []}
        return [{"topic": t, **answer.get(t, unknown)} for t in topics]


def described(partitions: int, leader: int = 1) -> dict:
    return {"error_code": 0, "partitions": [{"partition": p, "leader": leader} for p in range(partitions)]}


def test_a_topic_one_node_lists_and_the_next_does_not_know_yet_is_waited_for(monkeypatch):
    # a fresh three-node cluster (session 27): the node asked second had not yet heard of "surveys"
    monkeypatch.setattr(admin, "METADATA_POLL_SECONDS", 0.0)
    nodes = NodesAdmin([{"orders": described(4)}, {}, {"surveys": described(4)}])
    listed = asyncio.run(_listed(nodes, settings(), ["orders", "surveys"], led=set()))  # type: ignore[arg-type]
    assert [(m["topic"], len(m["partitions"])) for m in listed] == [("orders", 4), ("surveys", 4)]
    assert nodes.asked == [["orders", "surveys"], ["surveys"], ["surveys"]]


def test_a_created_topic_waits_for_its_leaders_one_that_existed_does_not(monkeypatch):
    monkeypatch.setattr(admin, "METADATA_POLL_SECONDS", 0.0)
    nodes = NodesAdmin([{"new": described(4, leader=-1), "old": described(4, leader=-1)}, {"new": described(4)}])
    listed = asyncio.run(_listed(nodes, settings(), ["new", "old"], led={"new"}))  # type: ignore[arg-type]
    assert [m["topic"] for m in listed] == ["new", "old"] and len(nodes.asked) == 2


def test_a_topic_never_listed_is_said_by_name(monkeypatch):
    monkeypatch.setattr(admin, "METADATA_POLL_SECONDS", 0.0)
    monkeypatch.setattr(admin, "METADATA_WAIT_SECONDS", 0.05)
    nodes = NodesAdmin([{"orders": described(4)}])
    with pytest.raises(RuntimeError, match=r"not in the broker's metadata after 0.05 s: \['surveys'\]"):
        asyncio.run(_listed(nodes, settings(), ["orders", "surveys"], led=set()))  # type: ignore[arg-type]


def test_a_topic_the_principal_may_not_describe_is_refused_at_once():
    nodes = NodesAdmin([{"orders": described(4), "surveys": {"error_code": 29, "partitions": []}}])
    with pytest.raises(TopicsRefused, match="surveys"):
        asyncio.run(_listed(nodes, settings(), ["orders", "surveys"], led=set()))  # type: ignore[arg-type]
    assert len(nodes.asked) == 1
