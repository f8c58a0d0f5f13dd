"""What ``pulse`` says when something ordinary goes wrong: one line, naming the thing, with a hint.

A missing file, a broker or Redis that is not there, a ``PULSE_*`` value the
settings refuse, a broken parameter or router file: these are mistakes a person
fixes in a minute, and a 40-line traceback hides the one line that matters. Every
sub-command goes through :func:`explain` (``pulse.cli.main``), so they all speak
the same way and exit with the same codes:

- :data:`EXIT_USAGE` (2): the command, a file or a setting is wrong; running it again will not help.
- :data:`EXIT_RUNTIME` (1): something it needs failed (broker, Redis, a child process); retry when it is back.

The line is ``pulse <command>: <subject>: <problem>; <hint>``. An exception this module does not
recognise is a bug and keeps its traceback; ``pulse --debug`` (or ``PULSE_DEBUG=1``) shows the
traceback of a recognised one too.
"""

from __future__ import annotations

import errno
import os
import re

#: exit status of a usage error: a bad option, file or setting (argparse exits 2 as well)
EXIT_USAGE = 2
#: exit status of a runtime failure: the broker, Redis or a child process failed
EXIT_RUNTIME = 1
#: exit status after Ctrl-C where stopping is not the command's normal end (128 + SIGINT, the shell's)
EXIT_INTERRUPTED = 130
#: values of PULSE_DEBUG that turn tracebacks on
DEBUG_VALUES = ("1", "true", "yes", "on")

SETTINGS_HINT = "see `pulse config` for every setting and the values it accepts"
BROKER_HINT = "is the broker running? `pulse dev` starts one and writes .pulse/dev.env; else set PULSE_BROKER_URL"
REDIS_HINT = "is redis-server running? `pulse dev` starts one and writes .pulse/dev.env; else set PULSE_REDIS_URL"


class CliError(Exception):
    """An ordinary mistake, said in one line: what (a file, URL or ``PULSE_*`` variable), what is wrong, and
    what to do; ``status`` is the exit status (:data:`EXIT_USAGE` or :data:`EXIT_RUNTIME`)."""

    def __init__(self, subject: str, problem: str, hint: str = "", status: int = EXIT_RUNTIME) -> None:
        super().__init__(f"{subject}: {problem}")
        self.subject, self.problem, self.hint, self.status = subject, problem, hint, status

    def line(self, command: str | None) -> str:
        """The one line printed on stderr (newlines in a message are folded: it stays one line)."""
        where = f"pulse {command}" if command else "pulse"
        text = f"{where}: {self.subject}: {self.problem}" + (f"; {self.hint}" if self.hint else "")
        return " ".join(text.split())


def usage_error(subject: str, problem: str, hint: str = "") -> CliError:
    """A :class:`CliError` with :data:`EXIT_USAGE`."""
    return CliError(subject, problem, hint, EXIT_USAGE)


def debug_requested(env: dict[str, str] | None = None) -> bool:
    """``PULSE_DEBUG`` is set to a true value (read directly: the settings may be what is broken)."""
    return (env if env is not None else os.environ).get("PULSE_DEBUG", "").strip().lower() in DEBUG_VALUES


def redact_url(url: str) -> str:
    """``url`` without a password (``redis://:secret@host`` -> ``redis://:***@host``): the line may be pasted."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _setting_url(name: str, default: str) -> str:
    """The effective value of a URL setting for a message; the raw variable if the settings do not load."""
    try:
        from pulse_config.settings import load_settings

        return redact_url(str(getattr(load_settings(), name)))
    except Exception:  # the settings themselves are broken: the variable as given, else the default
        return redact_url(os.environ.get(f"PULSE_{name.upper()}", default))


def setting_source(field: str) -> str:
    """Where a ``PULSE_*`` value came from: the environment, else the dev env file."""
    var = f"PULSE_{field.upper()}"
    if var in os.environ or var.lower() in {k.lower() for k in os.environ}:
        return var
    from pulse_config.settings import DEV_ENV_FILE

    return f"{var} (from {os.environ.get('PULSE_ENV_FILE', DEV_ENV_FILE)})"


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cross_check_error(message: str) -> CliError | None:
    """A cross-check of several settings (``Settings.rfm()``, a model validator), named by the variable its message
    starts with; None for any other message."""
    if not message.startswith("PULSE_"):
        return None
    subject, _, problem = message.partition(" ")
    return usage_error(subject.rstrip(":"), problem, SETTINGS_HINT)


def settings_error(exc: Exception) -> CliError | None:
    """A ``PULSE_*`` value the settings refuse, named by its variable (not by the Python field)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if isinstance(exc, ValidationError):
        errors = exc.errors()
        if not errors:
            return None
        first = errors[0]
        if not first.get("loc"):  # a cross-check of several settings (a model validator): its message names them
            return cross_check_error(str(first.get("ctx", {}).get("error", "")))
        field = str(first["loc"][0])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        problem = f"{first['msg']}, got {_short(first.get('input'))}{more}"
        return usage_error(setting_source(field), problem, SETTINGS_HINT)
    if isinstance(exc, SettingsError):
        # pydantic-settings: 'error parsing value for field "fx_rates" from source "EnvSettingsSource"'
        found = re.search(r'field "([^"]+)"', str(exc))
        if found is None:
            return None
        return usage_error(setting_source(found.group(1)), "not valid JSON (lists and maps are JSON)", SETTINGS_HINT)
    return None


def _os_error(exc: OSError) -> CliError | None:
    if exc.filename is None:
        return None
    name = str(exc.filename)
    if exc.errno == errno.ENOENT:
        return usage_error(name, "no such file", f"check the path (relative to {os.getcwd()})")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return usage_error(name, "permission denied", "check the file's permissions")
    if exc.errno == errno.EISDIR:
        return usage_error(name, "is a directory", "give a file")
    if exc.errno == errno.ENOTDIR:
        return usage_error(name, "a part of the path is not a directory", "check the path")
    return usage_error(name, (exc.strerror or str(exc)).lower(), "check the path")


def explain(exc: BaseException) -> CliError | None:
    """The one-line form of an ordinary mistake; None for anything else (a bug: the traceback stays)."""
    if isinstance(exc, CliError):
        return exc
    if not isinstance(exc, Exception):
        return None
    found = settings_error(exc)
    if found is not None:
        return found
    import redis
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from pulse.history import HistoryError
    from pulse_config.clv_params import ClvParamsError
    from streams.admin import GroupRefused, PartitionMismatch, TopicsRefused
    from streams.router.config import RouterConfigError
    from streams.stats import PopulationReadTimeout

    if isinstance(exc, redis.AuthenticationError):
        url = _setting_url("redis_url", "redis://127.0.0.1:6379/0")
        return CliError(f"Redis at {url}", f"authentication failed ({exc})", "check PULSE_REDIS_PASSWORD")
    if isinstance(exc, redis.TimeoutError):  # connected, or connecting, and no answer (a frozen Redis, a cut)
        url = _setting_url("redis_url", "redis://127.0.0.1:6379/0")
        return CliError(
            f"Redis at {url}", f"no answer within PULSE_REDIS_TIMEOUT_SECONDS ({exc})", "is it overloaded or frozen?"
        )
    if isinstance(exc, redis.ConnectionError):
        url = _setting_url("redis_url", "redis://127.0.0.1:6379/0")
        return CliError(f"Redis at {url}", f"cannot connect ({exc})", REDIS_HINT)
    if isinstance(exc, TopicsRefused | GroupRefused | PartitionMismatch):
        # the broker's ACLs or policies, or the topics' partitions, against the settings: a retry does not mend it
        url = _setting_url("broker_url", "kafka://127.0.0.1:9092")
        return usage_error(f"broker at {url}", str(exc))
    if isinstance(exc, KafkaConnectionError):
        url = _setting_url("broker_url", "kafka://127.0.0.1:9092")
        return CliError(f"broker at {url}", "unreachable", BROKER_HINT)
    if isinstance(exc, KafkaError):
        url = _setting_url("broker_url", "kafka://127.0.0.1:9092")
        return CliError(f"broker at {url}", f"{type(exc).__name__}: {exc}", "see the broker's log")
    if isinstance(exc, ClvParamsError):
        subject, _, problem = str(exc).partition(": ")
        return usage_error(
            subject, problem, "write it again with `pulse fit`, or remove it to score with the default parameters"
        )
    if isinstance(exc, HistoryError | RouterConfigError):
        subject, _, problem = str(exc).partition(": ")
        hint = (
            "deploy/router.example.toml shows every kind of destination"
            if isinstance(exc, RouterConfigError)
            else "see `pulse score --help` for the columns and the JSON-lines form"
        )
        return usage_error(subject, problem or subject, hint)
    if isinstance(exc, ValueError) and (found := cross_check_error(str(exc))) is not None:
        return found  # the settings' own cross-checks (Settings.rfm(), .churn())
    if isinstance(exc, PopulationReadTimeout):  # an OSError: before the file errors
        return CliError(
            f"population topic {exc.topic}",
            f"read to offset {exc.position} of {exc.end} within the timeout; its later snapshots were not read",
            "the broker is slow or busy: try again, or with a longer --timeout",
        )
    if isinstance(exc, OSError):
        return _os_error(exc)
    return None
