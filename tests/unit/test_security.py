"""Security settings reach Faust, every aiokafka client and every Redis client as the right arguments."""

from __future__ import annotations

import ssl

import faust
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.retry import Retry as SyncRetry

from pulse_config.settings import Settings
from streams.security import broker_credentials, kafka_client_kwargs, redis_client_kwargs


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, broker_url="kafka://k1:9092;k2:9093", **values)


def test_plaintext_is_the_default_and_needs_no_credentials():
    s = settings()
    assert broker_credentials(s) is None
    assert kafka_client_kwargs(s) == {"bootstrap_servers": "k1:9092,k2:9093", "security_protocol": "PLAINTEXT"}
    # every Redis client is bounded in time (PULSE_REDIS_TIMEOUT_SECONDS, or the caller's own bound)
    assert bounded(redis_client_kwargs(s)) == {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
    assert bounded(redis_client_kwargs(s, 1.0)) == {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}


def bounded(kwargs: dict) -> dict:
    """The kwargs less the retry policy (tested on its own below)."""
    return {k: v for k, v in kwargs.items() if k not in ("retry", "retry_on_error")}


def test_every_redis_connection_is_dropped_after_a_readonly_reply_and_retried_by_its_caller_only():
    """A READONLY reply (a failover behind the address) is an error the connections' retry policy supports, so
    redis-py disconnects the connection; with no retries of its own (timeouts keep their single bound)."""
    s = settings()
    for client in (
        aioredis.Redis.from_url(s.redis_url, **redis_client_kwargs(s)),
        redis.Redis.from_url(s.redis_url, **redis_client_kwargs(s, sync=True)),
    ):
        retry = client.connection_pool.make_connection().retry
        assert ReadOnlyError in retry._supported_errors and RedisConnectionError in retry._supported_errors
        assert retry.get_retries() == 0
        sync_client = isinstance(client, redis.Redis)
        assert isinstance(retry, SyncRetry) == sync_client  # a policy of the client's own kind (await or not)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(mechanism):
    s = settings(
        broker_security_protocol="SASL_PLAINTEXT",
        broker_sasl_mechanism=mechanism,
        broker_sasl_username="pulse",
        broker_sasl_password="s3cret",
    )
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("pulse", "s3cret", mechanism)
    kwargs = kafka_client_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert kwargs["sasl_mechanism"] == mechanism
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("pulse", "s3cret")
    assert kwargs["ssl_context"] is None


def test_sasl_ssl_carries_a_verifying_tls_context():
    s = settings(
        broker_security_protocol="SASL_SSL",
        broker_sasl_mechanism="SCRAM-SHA-512",
        broker_sasl_username="pulse",
        broker_sasl_password="s3cret",
    )
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL"
    kwargs = kafka_client_kwargs(s)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_ssl_with_a_ca_file(tmp_path):
    ca = tmp_path / "missing-ca.pem"
    with pytest.raises(FileNotFoundError):
        broker_credentials(settings(broker_security_protocol="SSL", broker_ssl_cafile=str(ca)))
    s = settings(broker_security_protocol="SSL")
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    kwargs = kafka_client_kwargs(s)
    assert kwargs["security_protocol"] == "SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_sasl_without_a_user_is_refused():
    with pytest.raises(ValueError, match="SASL_USERNAME"):
        broker_credentials(settings(broker_security_protocol="SASL_SSL"))


def test_unknown_protocol_or_mechanism_is_a_settings_error():
    with pytest.raises(ValidationError):
        settings(broker_security_protocol="KERBEROS")
    with pytest.raises(ValidationError):
        settings(broker_sasl_mechanism="GSSAPI")


async def test_aiokafka_accepts_the_kwargs_of_every_protocol():
    """The kwargs construct a real client (no connection is made before start())."""
    for protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        s = settings(broker_security_protocol=protocol, broker_sasl_username="u", broker_sasl_password="p")
        AIOKafkaConsumer(**kafka_client_kwargs(s), enable_auto_commit=False)


def test_faust_app_gets_the_credentials():
    from streams.app import create_app

    s = settings(broker_security_protocol="SASL_PLAINTEXT", broker_sasl_username="pulse", broker_sasl_password="s3cret")
    app = create_app(s, s.processor()).app
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.username == "pulse"


def test_redis_password_and_tls_ca():
    s = settings(redis_password="pw", redis_ssl_ca_certs="/etc/ca.pem")
    # the CA file only applies to TLS connections (a plain one rejects TLS arguments)
    bounds = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
    assert bounded(redis_client_kwargs(s)) == {**bounds, "password": "pw"}
    s = settings(redis_url="rediss://r:6380/0", redis_password="pw", redis_ssl_ca_certs="/etc/ca.pem")
    assert bounded(redis_client_kwargs(s)) == {**bounds, "password": "pw", "ssl_ca_certs": "/etc/ca.pem"}


def test_secrets_are_masked_in_the_effective_config():
    s = settings(broker_sasl_password="s3cret", redis_password="pw", api_token="tok")
    dumped = s.model_dump(mode="json")
    assert "s3cret" not in str(dumped) and "pw" not in dumped.values() and "tok" not in dumped.values()
