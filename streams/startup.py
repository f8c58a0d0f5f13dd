"""Start-up order does not matter: a worker waits for the broker and Redis instead of exiting.

Before Faust starts, the worker creates its topics (which needs the broker) and
checks that Redis answers. Either may be down when the worker starts (a
``docker compose up``, a node reboot, a broker rolling restart): each attempt
that fails is one log line naming what and where (credentials masked) and the
next try, with exponential back-off from ``startup_retry_min_seconds`` capped
at ``startup_retry_max_seconds``; after ``startup_wait_seconds`` (0: never)
the worker exits with status 69 (EX_UNAVAILABLE) for its supervisor to
restart it. Configuration errors (an input topic with the wrong partition
count, refused credentials, topics the cluster's ACLs do not let the worker
create or describe) are not retried: exit 78 (EX_CONFIG) with one line.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from aiokafka import errors as Errors
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from pulse_config.settings import Settings
from streams.admin import GroupRefused, PartitionMismatch, TopicsRefused, check_group_access, ensure_topics
from streams.api import WorkerStatus
from streams.security import SASL_PROTOCOLS, TLS_PROTOCOLS, kafka_client_kwargs, redis_client_kwargs

log = logging.getLogger(__name__)

#: Exit status when a dependency did not come up within startup_wait_seconds (sysexits.h EX_UNAVAILABLE).
EXIT_UNAVAILABLE = 69
#: Exit status when the topics do not fit the settings (sysexits.h EX_CONFIG): a restart alone does not help.
EXIT_CONFIG = 78
#: One SASL or TLS handshake that checks the credentials at start-up waits this long at most.
REFUSAL_PROBE_SECONDS = 10.0
#: One Redis connection attempt at start-up waits this long at most.
REDIS_CONNECT_TIMEOUT_SECONDS = 2.0

T = TypeVar("T")


def missing_codecs() -> list[str]:
    """The record-batch compression codecs this install cannot read (aiokafka reads gzip itself; snappy, lz4
    and zstd need cramjam, which ``aiokafka[snappy,lz4,zstd]`` brings).

    Why at start-up: which codec a record batch uses is the producer's choice, not this worker's, and a batch
    the consumer cannot decompress raised on every fetch of its partition: a crash loop over one producer's
    setting. An install without them refuses to start, in one line."""
    from aiokafka import codec

    readers = {"snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
    return [name for name, has in readers.items() if not has()]


class BrokerRefusedCredentials(RuntimeError):
    """The broker answered and refused this worker's SASL credentials or mechanism, or this worker does not trust
    the broker's TLS certificate: a configuration error."""


#: what a broker's SASL handshake raises when it refuses the credentials or the mechanism
_REFUSALS = (
    Errors.SaslAuthenticationFailed,
    Errors.AuthenticationFailedError,
    Errors.UnsupportedSaslMechanismError,
    Errors.IllegalSaslStateError,
)


async def refused_credentials(settings: Settings) -> BaseException | None:
    """The broker's refusal of this worker's SASL credentials, or a TLS certificate of the broker this worker
    does not trust, if one of the bootstrap servers answers with it.

    Why: aiokafka's bootstrap takes any failed connection for an unreachable host (``KafkaConnectionError: Unable
    to bootstrap``), so a wrong password or mechanism, or a missing CA file, read as a broker that is down: the
    worker waited and retried, saying so, for as long as ``startup_wait_seconds`` allows (forever by default).
    One handshake per server tells them apart; a server that cannot be reached is the retry's business."""
    kwargs = kafka_client_kwargs(settings)
    if kwargs.get("security_protocol") not in SASL_PROTOCOLS | TLS_PROTOCOLS:
        return None
    auth = {k: v for k, v in kwargs.items() if k != "bootstrap_servers"}
    for server in settings.broker_bootstrap().split(","):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(REFUSAL_PROBE_SECONDS * 1000), **auth),
                REFUSAL_PROBE_SECONDS,
            )
        except (*_REFUSALS, ssl.SSLCertVerificationError) as exc:
            return exc
        except (OSError, KafkaError, TimeoutError, ValueError):
            # not reached (or not a host:port): the retry's business; unless a TLS broker ended the handshake
            # because of this worker's client certificate (aiokafka reads that as a connection that closed)
            context = kwargs.get("ssl_context")
            if isinstance(context, ssl.SSLContext):
                refused = await _client_certificate_refused(host, int(port), context)
                if refused is not None:
                    return refused
            continue
        conn.close()
        return None
    return None


#: the TLS alerts of a broker that wants a client certificate it did not get, or does not trust the one it got
CLIENT_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
    }
)

#: ApiVersions v0 from client id "pulse-probe": size, api key 18, version 0, correlation id 1, client id
_API_VERSIONS_PROBE = struct.pack(">ihhih11s", 21, 18, 0, 1, 11, b"pulse-probe")


async def _client_certificate_refused(host: str, port: int, context: ssl.SSLContext) -> ssl.SSLError | None:
    """The TLS alert with which the broker at ``host:port`` refuses this worker's client certificate, if it does.

    Why one request: with TLS 1.3 the client's side of the handshake completes before the broker has checked
    the client's certificate; the broker's alert ("certificate required") arrives on the first read. So the probe
    sends ApiVersions and reads: a broker that accepts answers, one that refuses sends the alert."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), REFUSAL_PROBE_SECONDS
        )
    except ssl.SSLError as exc:
        return exc if exc.reason in CLIENT_CERTIFICATE_ALERTS else None
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(_API_VERSIONS_PROBE)
        await asyncio.wait_for(writer.drain(), REFUSAL_PROBE_SECONDS)
        await asyncio.wait_for(reader.read(4), REFUSAL_PROBE_SECONDS)
    except ssl.SSLError as exc:
        return exc if exc.reason in CLIENT_CERTIFICATE_ALERTS else None
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    return None


async def ensure_broker_access(settings: Settings) -> None:
    """What the worker needs of the broker before Faust starts: credentials it accepts (a refusal is not retried),
    its topics (:func:`ensure_topics`) and its consumer group (:func:`check_group_access`)."""
    refusal = await refused_credentials(settings)
    if isinstance(refusal, ssl.SSLError) and refusal.reason in CLIENT_CERTIFICATE_ALERTS:
        certificate = settings.broker_ssl_certfile
        raise BrokerRefusedCredentials(
            f"the broker at {masked(settings.broker_url)} "
            + (
                f"refused the TLS handshake with the client certificate PULSE_BROKER_SSL_CERTFILE={certificate}"
                if certificate
                else "refused the TLS handshake without a client certificate (PULSE_BROKER_SSL_CERTFILE is empty)"
            )
            + f": {one_line(refusal)}"
        )
    if isinstance(refusal, ssl.SSLCertVerificationError):
        raise BrokerRefusedCredentials(
            f"the TLS certificate of the broker at {masked(settings.broker_url)} is not trusted "
            f"(PULSE_BROKER_SSL_CAFILE={settings.broker_ssl_cafile or '(empty: the system CAs)'}): {one_line(refusal)}"
        )
    if refusal is not None:
        raise BrokerRefusedCredentials(
            f"the broker at {masked(settings.broker_url)} refused the credentials of PULSE_BROKER_SASL_USERNAME="
            f"{settings.broker_sasl_username!r} (PULSE_BROKER_SASL_MECHANISM={settings.broker_sasl_mechanism}): "
            f"{one_line(refusal)}"
        )
    await ensure_topics(settings)
    await check_group_access(settings, settings.app_id)


class DependencyUnavailable(RuntimeError):
    """The broker or Redis did not answer within ``startup_wait_seconds``."""


def masked(url: str) -> str:
    """``url`` without its password (it goes to the log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def one_line(exc: BaseException) -> str:
    name = type(exc).__name__
    text = " ".join(str(exc).split()) or "no detail"
    return (text if text.startswith(name) else f"{name}: {text}")[:300]


async def retry(
    what: str,
    url: str,
    attempt: Callable[[], Awaitable[T]],
    settings: Settings,
    transient: tuple[type[BaseException], ...],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``attempt`` until it succeeds, backing off on ``transient`` errors; DependencyUnavailable on timeout."""
    started = time.monotonic()
    delay = settings.startup_retry_min_seconds
    for n in range(1, sys.maxsize):
        try:
            result = await attempt()
        except transient as exc:
            waited = time.monotonic() - started
            bound = settings.startup_wait_seconds
            if bound and waited + delay > bound:
                log.error(
                    "%s at %s still unavailable after %.0fs (attempt %d): %s", what, url, waited, n, one_line(exc)
                )
                raise DependencyUnavailable(f"{what} at {url} unavailable") from exc
            log.warning("waiting for %s at %s (attempt %d): %s; next try in %.1fs", what, url, n, one_line(exc), delay)
            await sleep(delay)
            delay = min(delay * 2, settings.startup_retry_max_seconds)
        else:
            if n > 1:
                log.info("%s at %s is up (attempt %d, after %.1fs)", what, url, n, time.monotonic() - started)
            return result
    raise AssertionError("unreachable")


async def wait_for_dependencies(settings: Settings, status: WorkerStatus | None = None) -> None:
    """Create the topics once the broker answers, then wait until Redis answers a PING."""
    if status is not None:
        status.set(WorkerStatus.WAITING_BROKER)
    await retry(
        "the broker",
        masked(settings.broker_url),
        lambda: ensure_broker_access(settings),
        settings,
        (KafkaError, OSError, asyncio.TimeoutError),
    )
    if status is not None:
        status.set(WorkerStatus.WAITING_REDIS)

    async def ping() -> None:
        client = aioredis.from_url(
            settings.redis_url,
            **redis_client_kwargs(settings, REDIS_CONNECT_TIMEOUT_SECONDS),
        )
        try:
            await client.ping()
        finally:
            await client.aclose()

    await retry("Redis", masked(settings.redis_url), ping, settings, (RedisError, OSError, asyncio.TimeoutError))
    if status is not None:
        status.set(WorkerStatus.STARTING)


def wait_or_exit(settings: Settings, status: WorkerStatus | None = None, loglevel: str = "info") -> None:
    """:func:`wait_for_dependencies` with its own log handler (Faust configures logging only once it starts);
    exits with :data:`EXIT_UNAVAILABLE` when the wait is bounded and runs out."""
    # aiokafka logs each failed connection itself: one line per attempt is ours
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"))
    log.addHandler(handler)
    log.setLevel(loglevel.upper())
    log.propagate = False
    try:
        if missing := missing_codecs():
            log.critical(
                "refusing to start: this install cannot read %s-compressed input records (cramjam is missing; "
                "pip install 'aiokafka[snappy,lz4,zstd]'), and any producer may compress with them",
                "/".join(missing),
            )
            sys.exit(EXIT_CONFIG)
        asyncio.run(wait_for_dependencies(settings, status))
    except DependencyUnavailable:
        sys.exit(EXIT_UNAVAILABLE)
    except (PartitionMismatch, BrokerRefusedCredentials, TopicsRefused, GroupRefused) as exc:
        # a configuration error, not a crash: one line that says what and where to look, no traceback
        log.critical("refusing to start: %s", exc)
        sys.exit(EXIT_CONFIG)
    finally:
        log.removeHandler(handler)
        log.propagate = True
        quiet.setLevel(level)
