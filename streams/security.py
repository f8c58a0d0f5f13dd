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


def redis_client_kwargs(settings: Settings, timeout: float | None = None) -> dict[str, Any]:
    """Extra keyword arguments for ``Redis.from_url(settings.redis_url, ...)`` (sync or asyncio).

    A password in the URL wins over ``redis_password`` (redis-py's rule); TLS
    is chosen by the URL scheme (``rediss://``), the CA file applies only then
    (a plain connection does not accept TLS arguments).

    Every client gets a connect and a socket timeout (``timeout``, default
    ``redis_timeout_seconds``): the bound is the project's, not the installed
    redis-py's (none before 8.0, so a Redis that stops answering held a
    worker's profile writes for as long as TCP kept the connection; 5 s since).
    """
    bound = settings.redis_timeout_seconds if timeout is None else timeout
    kwargs: dict[str, Any] = {"socket_timeout": bound, "socket_connect_timeout": bound}
    password = settings.redis_password.get_secret_value()
    if password:
        kwargs["password"] = password
    if settings.redis_url.startswith("rediss://") and settings.redis_ssl_ca_certs:
        kwargs["ssl_ca_certs"] = settings.redis_ssl_ca_certs
    return kwargs
