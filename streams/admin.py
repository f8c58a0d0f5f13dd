"""Create the topics the app reads and writes, with the configured partitions."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)

from pulse_config.settings import Settings
from streams.security import kafka_client_kwargs

log = logging.getLogger(__name__)


COMPACTED = {"cleanup.policy": "compact"}
#: ticks are only useful for a moment: keep an hour
TICKS = {"retention.ms": str(3_600_000)}


class PartitionMismatch(RuntimeError):
    """An input topic or the state changelog exists with another partition count: co-partitioning would break."""


class TopicsRefused(RuntimeError):
    """The broker refused to create or describe topics the app needs (its ACLs, a topic policy, a replication
    factor it cannot meet): a configuration error, which a retry does not mend."""


#: the error codes of a topic the principal may not create or describe (Kafka checks the permission first, so a
#: topic that exists but is not described reads as missing, and its creation is refused the same way)
_NOT_AUTHORIZED = (TopicAuthorizationFailedError.errno, ClusterAuthorizationFailedError.errno)


class GroupRefused(RuntimeError):
    """The cluster's ACLs do not let this principal use the worker's consumer group: a configuration error."""


def _principal(settings: Settings) -> str:
    if settings.broker_sasl_username:
        return f"PULSE_BROKER_SASL_USERNAME={settings.broker_sasl_username!r}"
    return "this client's principal"


def _refused(settings: Settings, what: str, refusals: dict[str, str], authorization: bool) -> TopicsRefused:
    by_reason: dict[str, list[str]] = {}
    for topic, why in sorted(refusals.items()):
        by_reason.setdefault(why, []).append(topic)
    topics = "; ".join(f"{', '.join(names)} ({why.rstrip('.')})" for why, names in by_reason.items())
    if not authorization:
        return TopicsRefused(f"the broker refused to {what} topics: {topics}")
    admin = (
        "An admin creates them ('pulse topics' under the admin's credentials) and allows"
        if what == "create"
        else "An admin allows"
    )
    return TopicsRefused(
        f"the broker's ACLs do not let {_principal(settings)} {what} topics: {topics}. {admin} this principal Read, "
        "Write and Describe on them: docs/operations.md, 'A cluster with ACLs'"
    )


async def check_group_access(settings: Settings, group: str, setting: str = "PULSE_APP_ID") -> None:
    """Raise :class:`GroupRefused` if the broker will not tell this principal the coordinator of ``group`` (the
    ACL that allows Read on the group allows this too); ``setting`` names what sets the group, for the message.

    Why before the consumer starts: without the group ACL, aiokafka's coordinator task ends on
    ``GroupAuthorizationFailedError`` (inside Faust's consumer thread, for a worker) and the process hangs after
    "Subscribed to topic(s)", silent, never joining (tests/e2e/test_kafka_acls.py). Any other answer (a
    coordinator not yet elected on a new cluster, a broker restarting) is the consumer's own business: not
    checked here."""
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings), request_timeout_ms=15000)
    try:
        await admin.start()
        await admin.find_coordinator(group)
    except GroupAuthorizationFailedError as exc:
        raise GroupRefused(
            f"the broker's ACLs do not let {_principal(settings)} use the consumer group {group!r} ({setting}): an "
            "admin allows this principal Read on it: docs/operations.md, 'A cluster with ACLs'"
        ) from exc
    except KafkaError:
        pass
    finally:
        await admin.close()


async def create_topics(admin: AIOKafkaAdminClient, settings: Settings, new: list[NewTopic]) -> None:
    """Create ``new``; a topic created meanwhile by another process is no error.

    Why the per-topic codes are read: aiokafka's ``create_topics`` returns the broker's answer without raising, so
    a refused topic (no CREATE in the cluster's ACLs, a topic policy, too few brokers for the replication factor)
    passed for created, and the start-up then waited for it to show in the metadata and crashed with a traceback
    (tests/e2e/test_kafka_acls.py). A refusal now stops the start in one line; a retriable code is raised for the
    start-up's retry."""
    response = await admin.create_topics(new)
    refusals: dict[str, str] = {}
    authorization = False
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        error = for_code(code)
        detail = entry[2] if len(entry) > 2 and entry[2] else error.message
        if error.retriable:
            raise error(f"creating topic {topic}: {detail}")
        refusals[topic] = detail
        authorization |= code in _NOT_AUTHORIZED
    if refusals:
        raise _refused(settings, "create", refusals, authorization)


async def create_missing(admin: AIOKafkaAdminClient, settings: Settings, topics: list[NewTopic]) -> list[str]:
    """Create those of ``topics`` the broker does not list (:func:`create_topics`); the names it was asked to
    create. The worker's, the router's and the console's start, and ``pulse topics``, create theirs this way."""
    existing = set(await admin.list_topics())
    new = [t for t in topics if t.name not in existing]
    if new:
        await create_topics(admin, settings, new)
    return [t.name for t in new]


#: what an operator can do about an input topic that gained partitions (the worker's refusals end with it)
PARTITIONS_ADDED_HINT = (
    "Every state is kept in partition murmur2(customer id) % PULSE_PARTITIONS of every input topic and of the "
    "changelog, and Kafka cannot remove partitions: see docs/operations.md, 'Partitions added to an input topic'."
)


#: how long ``ensure_topics`` waits for topics it created to show in the broker's metadata, and how often it asks
METADATA_WAIT_SECONDS = 30.0
METADATA_POLL_SECONDS = 0.1


def worker_topics(settings: Settings) -> list[str]:
    """Every topic a scoring worker reads or writes, in the order ``pulse topics`` lists them."""
    return [
        *settings.input_topics().values(),
        settings.topic_retention_actions,
        settings.topic_ticks(),
        settings.topic_dead_letters,
        settings.topic_retention_alerts,
        settings.topic_vip_changes,
        settings.topic_state_changelog(),
        settings.topic_population(),
    ]


def router_topics(settings: Settings) -> list[str]:
    """Every topic ``pulse router`` reads or writes: the alerts and VIP changes it delivers, its delivery dead
    letters, and the retention actions its actions API (and its delivery records) write."""
    return [
        settings.topic_retention_alerts,
        settings.topic_vip_changes,
        settings.topic_delivery_dead_letters,
        settings.topic_retention_actions,
    ]


def console_topics(settings: Settings) -> list[str]:
    """Every topic ``pulse console`` reads or writes: the router's (it makes sure they exist, as the router does;
    it reads the alerts, VIP changes and retention actions, and writes actions) and the population topic, whose
    indicators its population panel reads."""
    return [*router_topics(settings), settings.topic_population()]


def console_group(settings: Settings) -> str:
    """The consumer group of ``pulse console``'s feed (``PULSE_CONSOLE_GROUP_ID``, or ``{app_id}-console``)."""
    return settings.console_group_id or f"{settings.app_id}-console"


#: what a principal does on each topic of its process, and on its consumer group: the least each needs
TOPIC_OPERATIONS = ("Read", "Write", "Describe")
GROUP_OPERATIONS = ("Read",)


def acls(settings: Settings, principal: str, bootstrap: str, role: str = "worker") -> list[str]:
    """The ``kafka-acls.sh`` command lines that let ``principal`` (``User:NAME``) run ``role`` (a scoring worker,
    ``pulse router`` or ``pulse console``) on topics an admin created: its topics and its consumer group. The
    least each needs, and what tests/e2e/test_kafka_acls.py grants (it parses these lines), so what ``pulse
    topics --acls`` prints is what is tested."""
    topics, group = {
        "worker": (worker_topics(settings), settings.app_id),
        "router": (router_topics(settings), settings.router_group_id()),
        "console": (console_topics(settings), console_group(settings)),
    }[role]
    base = f"kafka-acls.sh --bootstrap-server {bootstrap} --add --allow-principal {principal}"
    topic_ops = " ".join(f"--operation {op}" for op in TOPIC_OPERATIONS)
    group_ops = " ".join(f"--operation {op}" for op in GROUP_OPERATIONS)
    return [f"{base} {topic_ops} --topic {t}" for t in topics] + [f"{base} {group_ops} --group {group}"]


async def ensure_topics(settings: Settings) -> None:
    """Idempotent: create missing topics; refuse input topics and a state changelog with the wrong partition count.

    The state table's changelog is created here too, and every topic created is waited for until the broker's
    metadata lists all its partitions. Why: Faust otherwise creates the changelog itself a moment before the
    consumer's first metadata request, and on Apache Kafka that request can miss a topic just created; the group
    leader then assigns without the changelog ("Ignoring missing topic"), no member recovers the partitions it
    takes, and events applied meanwhile by another member are lost (tests/faults/test_retained_partitions.py on
    Kafka, session 11). The consumer does not ask again for minutes (``metadata_max_age_ms``)."""
    # the ticks topic is read with the inputs, so it must be co-partitioned with them
    inputs = [*settings.input_topics().values(), settings.topic_retention_actions, settings.topic_ticks()]
    changelog = settings.topic_state_changelog()
    # the population topic has one partition: created below on its own
    wanted = [t for t in worker_topics(settings) if t != settings.topic_population()]
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings), request_timeout_ms=15000)
    try:
        await admin.start()  # inside the try: a broker that is down must not leak the client (start-up retries)
        configs = {settings.topic_ticks(): TICKS, changelog: COMPACTED}
        topics = [
            NewTopic(t, settings.partitions, settings.replication_factor, topic_configs=configs.get(t) or {})
            for t in wanted
        ]
        # one compacted partition: the latest counts of every input partition, keyed by partition
        topics.append(NewTopic(settings.topic_population(), 1, settings.replication_factor, topic_configs=COMPACTED))
        created = await create_missing(admin, settings, topics)
        if created:
            log.info("created topics %s (or another process did meanwhile)", created)
        # a topic another worker (or anyone) created a moment ago may be missing from the listing on Kafka: its
        # partition count is whatever it was created with, so it is waited for and checked with the rest. The
        # changelog too: an input partition without its changelog partition is never recovered
        described = await _listed(admin, settings, sorted({*created, *inputs, changelog}), led=set(created))
        for meta in described:
            n = len(meta["partitions"])
            if meta["topic"] in (*inputs, changelog) and n != settings.partitions:
                raise PartitionMismatch(
                    f"topic {meta['topic']} has {n} partitions, PULSE_PARTITIONS is {settings.partitions}. "
                    + PARTITIONS_ADDED_HINT
                )
    finally:
        await admin.close()


async def _listed(
    admin: AIOKafkaAdminClient, settings: Settings, topics: list[str], led: set[str]
) -> list[dict[str, Any]]:
    """Each of ``topics`` as the broker's metadata lists it with its partitions (those in ``led``, just created:
    each with a leader), waiting until every one is (Kafka lists a new topic's partitions together, in one
    metadata update). A topic that existed may have a partition without a leader (its broker down): the worker
    starts, and its consumer waits for the leader as it would mid-run.

    Why wait for each, not only for the topics just created: each node of a cluster answers from its own metadata
    cache, and the admin client asks whichever node is least loaded. A topic one node has listed can be unknown
    to the next one asked a moment later, which then describes it with no partitions (a fresh three-node cluster:
    "complaints has 0 partitions", tests/faults/test_replicated_kafka.py, session 27). A topic this principal
    may not describe is refused at once: waiting would not change that."""
    deadline = time.monotonic() + METADATA_WAIT_SECONDS
    listed: dict[str, dict[str, Any]] = {}
    while True:
        waiting = sorted(set(topics) - set(listed))
        described = await admin.describe_topics(waiting)
        hidden = {m["topic"]: "not authorized" for m in described if m.get("error_code", 0) in _NOT_AUTHORIZED}
        if hidden:
            raise _refused(settings, "describe", hidden, authorization=True)
        for meta in described:
            found = meta.get("partitions") or []
            leaders = meta["topic"] not in led or all(p.get("leader", -1) >= 0 for p in found)
            if meta.get("error_code", 0) == 0 and found and leaders:
                listed[meta["topic"]] = meta
        if len(listed) == len(set(topics)):
            return [listed[t] for t in topics]
        if time.monotonic() > deadline:
            missing = sorted(set(topics) - set(listed))
            raise RuntimeError(f"topics not in the broker's metadata after {METADATA_WAIT_SECONDS} s: {missing}")
        await asyncio.sleep(METADATA_POLL_SECONDS)
