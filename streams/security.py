"""Kafka and Redis connection security, built from settings in one place.

Faust's own clients get :func:`broker_credentials`; every plain aiokafka client
the app builds (admin, population follower, producers of the CLI) gets
:func:`kafka_client_kwargs`, which derives its kwargs from the same
credentials with Faust's own mapping, so the two can never disagree. Every
Redis client gets :func:`redis_client_kwargs`.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import CredentialsT
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError
from redis.retry import Retry as SyncRetry

from pulse_config.settings import Settings

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def broker_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS context for the brokers (None without TLS): verifies them with the CA file, or the system CAs."""
    if settings.broker_security_protocol not in TLS_PROTOCOLS:
        return None
    return create_ssl_context(
        cafile=settings.broker_ssl_cafile or None,
        certfile=settings.broker_ssl_certfile or None,
        keyfile=settings.broker_ssl_keyfile or None,
    )


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the configured protocol (None: PLAINTEXT)."""
    protocol = settings.broker_security_protocol
    context = broker_ssl_context(settings)
    if protocol in SASL_PROTOCOLS:
        if not settings.broker_sasl_username:
            raise ValueError(f"PULSE_BROKER_SECURITY_PROTOCOL={protocol} needs PULSE_BROKER_SASL_USERNAME")
        return faust.SASLCredentials(
            username=settings.broker_sasl_username,
            password=settings.broker_sasl_password.get_secret_value(),
            mechanism=settings.broker_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: bootstrap servers plus the security settings."""
    return {
        "bootstrap_servers": settings.broker_bootstrap(),
        **credentials_to_aiokafka_auth(broker_credentials(settings)),
    }


def redis_client_kwargs(settings: Settings, timeout: float | None = None, *, sync: bool = False) -> dict[str, Any]:
    """Extra keyword arguments for ``Redis.from_url(settings.redis_url, ...)`` (asyncio; ``sync``: redis-py's
    blocking client).

    A password in the URL wins over ``redis_password`` (redis-py's rule); TLS
    is chosen by the URL scheme (``rediss://``), the CA file applies only then
    (a plain connection does not accept TLS arguments).

    Every client gets a connect and a socket timeout (``timeout``, default
    ``redis_timeout_seconds``): the bound is the project's, not the installed
    redis-py's (none before 8.0, so a Redis that stops answering held a
    worker's profile writes for as long as TCP kept the connection; 5 s since).

    And every client drops a connection that answered READONLY. A failover behind one address (a managed
    Redis's DNS name, a Service, a virtual IP) sends new connections to the promoted primary, while those already
    open still reach the demoted one, now a replica refusing every write; kept, such a connection failed every
    retry of the writer, the router and the console's feed for as long as it lived (tests/faults/
    test_redis_failover.py). redis-py's retry policy disconnects a connection whose error it supports; with no
    retry of its own (0, redis-py 8's default, pinned since 5.x differs) the error reaches the caller, whose next
    attempt connects anew, as redis-py's Sentinel connections do.
    """
    bound = settings.redis_timeout_seconds if timeout is None else timeout
    retry = (SyncRetry if sync else AsyncRetry)(NoBackoff(), 0)
    kwargs: dict[str, Any] = {
        "socket_timeout": bound,
        "socket_connect_timeout": bound,
        "retry": retry,
        "retry_on_error": [ReadOnlyError],
    }
    password = settings.redis_password.get_secret_value()
    if password:
        kwargs["password"] = password
    if settings.redis_url.startswith("rediss://") and settings.redis_ssl_ca_certs:
        kwargs["ssl_ca_certs"] = settings.redis_ssl_ca_certs
    return kwargs
