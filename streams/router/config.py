"""The router's configuration file: destinations and routes, validated at start.

One TOML file (stdlib ``tomllib``, no extra dependency) with three parts::

    [router]                 # optional: deliver_historical, default_route
    [[destinations]]         # name, kind and the kind's fields; rate limit and grouping
    [[routes]]               # which alerts go to which destinations

Validation is pydantic v2 (discriminated on ``kind``), so a wrong file stops
the router at start with one line naming the file and the field, e.g.
``router.toml: destinations[1] (slack-vip).url: Input should be a valid URL``,
instead of failing at the first alert. Secrets need not be written in the
file: any string may be ``${ENV_VAR}``, replaced by that variable (missing:
an error naming it).
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pulse_config.settings import Settings
from schemas.alerts import RiskLevel

#: the event types the router reads: churn alerts (retention topic) and VIP changes (VIP topic)
EventType = Literal["retention_alert", "vip_change"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


#: destinations read by people in a chat tool
CHAT_KINDS = frozenset({"slack", "feishu", "dingtalk", "wecom"})


class RouterConfigError(ValueError):
    """A configuration file the router cannot run with; the message is one line naming file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Destination(_Strict):
    name: str = Field(pattern=_NAME)
    #: messages per rolling minute (None: PULSE_ROUTER_RATE_PER_MINUTE; 0: unlimited)
    rate_per_minute: int | None = Field(None, ge=0)
    #: quiet grouping window (None: PULSE_ROUTER_GROUP_SECONDS; 0: one message per alert)
    group_seconds: float | None = Field(None, ge=0)
    group_max_alerts: int | None = Field(None, ge=1)


class WebhookDestination(_Destination):
    """Generic webhook: one JSON alert per request, ``X-Pulse-Signature`` = hex HMAC-SHA256 of the body."""

    kind: Literal["webhook"]
    url: AnyHttpUrl
    secret: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_alert_per_request(self) -> WebhookDestination:
        # the receiver de-duplicates by the Idempotency-Key header, which names one alert
        if self.group_seconds:
            raise ValueError("group_seconds: a webhook sends one alert per request (its Idempotency-Key)")
        return self


class SlackDestination(_Destination):
    """Slack (or a Slack-compatible: Mattermost, Rocket.Chat) incoming webhook."""

    kind: Literal["slack"]
    url: AnyHttpUrl


class FeishuDestination(_Destination):
    """Feishu / Lark custom bot; ``secret`` when its signature verification is on."""

    kind: Literal["feishu"]
    url: AnyHttpUrl
    secret: str | None = None


class DingTalkDestination(_Destination):
    """DingTalk custom robot; ``secret`` (SEC…) when signing is on: timestamp and sign go in the URL."""

    kind: Literal["dingtalk"]
    url: AnyHttpUrl
    secret: str | None = None


class WeComDestination(_Destination):
    """WeCom (企业微信) group robot, markdown messages."""

    kind: Literal["wecom"]
    url: AnyHttpUrl


class EmailDestination(_Destination):
    """E-mail over SMTP: plain connection, STARTTLS or implicit TLS; login when a username is given."""

    kind: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: str | None = None
    #: CA bundle that signs the server's certificate (starttls/tls; empty: the system CAs)
    ca_file: str | None = None
    sender: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(min_length=1)
    subject_prefix: str = "[customer-pulse]"

    @model_validator(mode="after")
    def _login_over_tls(self) -> EmailDestination:
        # a password over a plain connection would cross the network readable
        if self.username and self.security == "none" and not _loopback(self.host):
            raise ValueError("security: a login needs starttls or tls (a plain connection would expose the password)")
        return self


def _loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


class FileDestination(_Destination):
    """Appends each message as text to a local file: an audit trail, and what ``pulse dev`` uses."""

    kind: Literal["file"]
    path: str = Field(min_length=1)


Destination = Annotated[
    WebhookDestination
    | SlackDestination
    | FeishuDestination
    | DingTalkDestination
    | WeComDestination
    | EmailDestination
    | FileDestination,
    Field(discriminator="kind"),
]


class Route(_Strict):
    """Matches an alert when every given condition holds (an empty list or None: any)."""

    name: str = Field(pattern=_NAME)
    destinations: list[str] = Field(min_length=1)
    events: list[EventType] = Field(default_factory=lambda: list[EventType](["retention_alert"]), min_length=1)
    levels: list[RiskLevel] = Field(default_factory=list)
    vip: bool | None = None
    priority: bool | None = None
    segments: list[str] = Field(default_factory=list)
    #: any of these reason codes among the alert's reasons
    reasons: list[str] = Field(default_factory=list)
    min_value_at_risk: Decimal | None = Field(None, ge=0)


class RouterSection(_Strict):
    #: alerts marked historical (replay, backfill) are dropped unless this is true
    deliver_historical: bool = False
    #: destinations of an alert no route matches (empty: such alerts go nowhere, counted as unrouted)
    default_route: list[str] = Field(default_factory=list)


class RouterConfig(_Strict):
    router: RouterSection = Field(default_factory=RouterSection)
    destinations: list[Destination] = Field(min_length=1)
    routes: list[Route] = Field(default_factory=list)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for d in value:
            if d.name in seen:
                raise ValueError(f"destination name {d.name!r} is used twice")
            seen.add(d.name)
        return value

    @model_validator(mode="after")
    def _known_destinations(self) -> RouterConfig:
        known = {d.name for d in self.destinations}
        refs = [("router.default_route", self.router.default_route)]
        refs += [(f"routes[{i}] ({r.name}).destinations", r.destinations) for i, r in enumerate(self.routes)]
        for where, names in refs:
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f"{where}: unknown destination {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return self

    def destination(self, name: str) -> Any:
        return next(d for d in self.destinations if d.name == name)


def _expand(value: Any, path: str, file: str) -> Any:
    """Replace ``${VAR}`` in every string by the environment variable (a secret stays out of the file)."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise RouterConfigError(f"{file}: {path}: environment variable {m.group(1)} is not set")
            return os.environ[m.group(1)]

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else k, file) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", file) for i, v in enumerate(value)]
    return value


def _where(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a readable path: destinations[1] (slack-vip).url."""
    parts: list[str] = []
    node: Any = raw
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts[-1] += f" ({node['name']})"
        elif i > 0 and isinstance(loc[i - 1], int) and loc[0] == "destinations" and part == node_kind(node):
            continue  # the discriminator's tag pydantic adds to the path: the kind is known from the entry
        else:
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def node_kind(node: Any) -> Any:
    return node.get("kind") if isinstance(node, dict) else None


def parse_config(text: str, file: str = "<config>") -> RouterConfig:
    """Validate a TOML text; raises :class:`RouterConfigError` with one line naming ``file`` and the field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RouterConfigError(f"{file}: not valid TOML: {exc}") from None
    raw = _expand(raw, "", file)
    try:
        return RouterConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _where(raw, tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise RouterConfigError(f"{file}: {where or 'top level'}: {msg}{more}") from None


def load_config(path: str | Path) -> RouterConfig:
    """Read and validate the router's configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RouterConfigError(f"{path}: cannot read the router configuration: {exc.strerror}") from None
    return parse_config(text, str(path))


def resolved(dest: Any, settings: Settings) -> tuple[int, float, int]:
    """(rate per minute, group seconds, group max alerts) of a destination, settings filling what it omits."""
    group = dest.group_seconds
    if group is None:
        # a webhook receiver is a program: one request per alert; people get digests
        group = 0.0 if dest.kind == "webhook" else settings.router_group_seconds
    rate = dest.rate_per_minute
    if rate is None:
        # chat robots have documented limits (DingTalk, WeCom: 20 a minute); a webhook, mail or file has none
        rate = settings.router_rate_per_minute if dest.kind in CHAT_KINDS else 0
    return rate, group, dest.group_max_alerts or settings.router_group_max_alerts
