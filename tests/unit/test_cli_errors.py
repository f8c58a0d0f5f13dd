"""Ordinary mistakes say one line naming the file, URL or ``PULSE_*`` variable, with a hint, and exit 2 (usage)
or 1 (runtime), the same way in every sub-command (issue 17, pulse/errors.py).

Each case runs the real ``pulse`` in a subprocess (a fresh folder, no ``PULSE_*`` from the caller, no
``.pulse/dev.env``) and checks the exact shape of stderr: one line ``pulse <command>: <subject>: <problem>;
<hint>``, no traceback. "Unreachable" brokers and Redis are loopback ports nobody listens on.
"""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pulse.errors import EXIT_RUNTIME, EXIT_USAGE, redact_url
from scoring.clv import DAY_MS

#: bound on one ``pulse`` run (a refused connection fails at once; the machine may be busy)
RUN_TIMEOUT_SECONDS = 120
SETTINGS_HINT = re.escape("see `pulse config` for every setting and the values it accepts")


def pulse(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("PULSE_")}
    clean["PULSE_ENV_FILE"] = ""  # no .pulse/dev.env of anybody's `pulse dev`
    return subprocess.run(
        [sys.executable, "-m", "pulse", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        stdin=subprocess.DEVNULL,
    )


def one_line(result: subprocess.CompletedProcess[str], status: int, command: str, rest: str) -> str:
    """stderr is exactly one line ``pulse <command>: <rest>`` (rest a regex) and the exit status ``status``."""
    err = result.stderr
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line:\n{err}"
    line = err.rstrip("\n")
    assert "Traceback" not in line
    assert re.fullmatch(rf"pulse {re.escape(command)}: {rest}", line), line
    assert result.returncode == status, (result.returncode, line)
    print(line)
    return line


def dead_port() -> int:
    """A loopback port nobody listens on (bound and released: connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_orders(path: Path, rows: list[tuple[str, int, str]], header: str = "customer_id,occurred_at,amount") -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header.split(","))
        for customer, at_ms, amount in rows:
            writer.writerow([customer, datetime.fromtimestamp(at_ms / 1000, tz=UTC).isoformat(), amount])


@pytest.fixture
def orders(tmp_path: Path) -> Path:
    path = tmp_path / "orders.csv"
    write_orders(path, [("C1", 1_700_000_000_000, "10.00"), ("C1", 1_700_000_000_000 + 3 * DAY_MS, "12.00")])
    return path


# --- files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["score", "fit", "replay"])
def test_a_missing_input_file_is_named_with_exit_2(tmp_path: Path, command: str) -> None:
    result = pulse(tmp_path, command, "no-such.csv")
    one_line(result, EXIT_USAGE, command, r"no-such\.csv: no such file; check the path \(relative to .+\)")


def test_a_folder_for_a_file_and_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    one_line(pulse(tmp_path, "score", "exports"), EXIT_USAGE, "score", r"exports: is a directory; give a file")
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("customer_id,occurred_at,amount\nCé,2026-01-01,1.00\n".encode("latin-1"))
    one_line(
        pulse(tmp_path, "score", "latin1.csv"),
        EXIT_USAGE,
        "score",
        r"latin1\.csv: not UTF-8 text \(byte \d+: .+\); save it as UTF-8 \(Excel: CSV UTF-8\); see `pulse score "
        r"--help`.*",
    )


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named_with_exit_2(tmp_path: Path, orders: Path) -> None:
    orders.chmod(0)
    one_line(pulse(tmp_path, "score", orders.name), EXIT_USAGE, "score", r"orders\.csv: permission denied; .+")


@pytest.mark.parametrize("command", ["score", "replay"])
def test_a_file_without_the_columns_names_them(tmp_path: Path, command: str) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("id,date,total\nC1,2026-01-01,1\n")
    one_line(
        pulse(tmp_path, command, path.name, PULSE_BROKER_URL=f"kafka://127.0.0.1:{dead_port()}"),
        EXIT_USAGE,
        command,
        r"wrong\.csv: missing column\(s\) customer_id, occurred_at, amount; has id, date, total; see `pulse score "
        r"--help` .+",
    )


def test_an_output_folder_that_does_not_exist(tmp_path: Path, orders: Path) -> None:
    one_line(
        pulse(tmp_path, "score", orders.name, "--out", "nowhere/profiles.csv"),
        EXIT_USAGE,
        "score",
        r"nowhere/profiles\.csv: no folder nowhere for the profiles; create it, or give another path",
    )


def test_a_broken_parameter_file_is_named_by_the_worker_and_by_score(tmp_path: Path, orders: Path) -> None:
    (tmp_path / "params.json").write_text('{"bgnbd": {"r": 1}}')
    for command, args in (("worker", ()), ("score", (orders.name,))):
        one_line(
            pulse(tmp_path, command, *args, PULSE_CLV_PARAMS_FILE="params.json"),
            EXIT_USAGE,
            command,
            r"params\.json: bgnbd\.alpha must be a positive number, got None; write it again with `pulse fit`, "
            r"or remove it to score with the default parameters",
        )


def test_a_broken_router_configuration_is_named(tmp_path: Path) -> None:
    (tmp_path / "router.toml").write_text("[router\n")
    one_line(
        pulse(tmp_path, "router", "--check"),
        EXIT_USAGE,
        "router",
        r"router\.toml: not valid TOML: .+; deploy/router\.example\.toml shows every kind of destination",
    )
    one_line(
        pulse(tmp_path, "router", "--config", "missing.toml", "--check"),
        EXIT_USAGE,
        "router",
        r"missing\.toml: cannot read the router configuration: No such file or directory; .+",
    )


# --- settings --------------------------------------------------------------------------------------------

#: every sub-command that reads the settings, with arguments that would otherwise let it start
SETTINGS_COMMANDS = [
    ("worker",),
    ("score", "orders.csv"),
    ("fit", "orders.csv"),
    ("replay", "orders.csv"),
    ("simulate", "--customers", "2"),
    ("alerts",),
    ("stats",),
    ("profile", "C1"),
    ("router", "--check"),
    ("config", "--effective"),
    ("dev", "--customers", "2"),
]


@pytest.mark.parametrize("args", SETTINGS_COMMANDS, ids=lambda a: a[0])
def test_a_bad_setting_is_named_by_its_variable_in_every_command(tmp_path: Path, orders: Path, args) -> None:
    result = pulse(tmp_path, *args, PULSE_PARTITIONS="abc")
    one_line(
        result,
        EXIT_USAGE,
        args[0],
        r"PULSE_PARTITIONS: Input should be a valid integer, unable to parse string as an integer, got 'abc'; "
        + SETTINGS_HINT,
    )
    assert not (tmp_path / ".pulse" / "logs").exists()  # pulse dev started nothing


def test_json_settings_cross_checks_and_the_env_file_are_named(tmp_path: Path) -> None:
    one_line(
        pulse(tmp_path, "config", "--effective", PULSE_FX_RATES="EUR=1.08"),
        EXIT_USAGE,
        "config",
        r"PULSE_FX_RATES: not valid JSON \(lists and maps are JSON\); " + SETTINGS_HINT,
    )
    one_line(
        pulse(tmp_path, "worker", PULSE_VIP_ENTER_SHARE="0.1", PULSE_VIP_LEAVE_SHARE="0.05"),
        EXIT_USAGE,
        "worker",
        r"PULSE_VIP_LEAVE_SHARE: must be at least PULSE_VIP_ENTER_SHARE; " + SETTINGS_HINT,
    )
    one_line(
        pulse(tmp_path, "worker", PULSE_STOP_TIMEOUT_SECONDS="5"),
        EXIT_USAGE,
        "worker",
        r"PULSE_STOP_TIMEOUT_SECONDS: must be longer than PULSE_SHUTDOWN_GRACE_SECONDS, got 5 and 10; " + SETTINGS_HINT,
    )
    (tmp_path / "dev.env").write_text("PULSE_METRICS_PORT=99999\n")
    one_line(
        pulse(tmp_path, "config", "--effective", PULSE_ENV_FILE="dev.env"),
        EXIT_USAGE,
        "config",
        r"PULSE_METRICS_PORT \(from dev\.env\): Input should be less than or equal to 65535, got '99999'; "
        + SETTINGS_HINT,
    )


# --- broker and Redis ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("stats",), ("alerts",), ("simulate", "--customers", "2"), ("replay", "orders.csv")], ids=lambda a: a[0]
)
def test_an_unreachable_broker_is_named_by_its_url_with_exit_1(tmp_path: Path, orders: Path, args) -> None:
    url = f"kafka://127.0.0.1:{dead_port()}"
    result = pulse(tmp_path, *args, PULSE_BROKER_URL=url)
    # simulate says what it is about to send on stdout first; stderr is the one line
    one_line(
        result,
        EXIT_RUNTIME,
        args[0],
        re.escape(f"broker at {url}: unreachable; is the broker running? `pulse dev` starts one and writes ")
        + r"\.pulse/dev\.env; else set PULSE_BROKER_URL",
    )


def test_redis_down_is_named_by_its_url_without_the_password(tmp_path: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{dead_port()}/0"
    line = one_line(
        pulse(tmp_path, "profile", "C1", PULSE_REDIS_URL=url),
        EXIT_RUNTIME,
        "profile",
        re.escape(f"Redis at {redact_url(url)}: cannot connect (")
        + r".+\); is redis-server running\? `pulse dev` starts one .+; else set PULSE_REDIS_URL",
    )
    assert "hunter2" not in line


def test_a_redis_that_does_not_answer_is_a_timeout_not_a_hang(tmp_path: Path) -> None:
    """A port that takes the connection and never answers (a frozen Redis: the kernel accepts, nobody reads): the
    command ends after PULSE_REDIS_TIMEOUT_SECONDS with one line that says so. Before (session 26) the bound was
    redis-py's default (none before redis-py 8: `pulse profile` waited for as long as the connection lived) and
    the line said "cannot connect"."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        line = one_line(
            pulse(tmp_path, "profile", "C1", PULSE_REDIS_URL=url, PULSE_REDIS_TIMEOUT_SECONDS="0.5"),
            EXIT_RUNTIME,
            "profile",
            re.escape(f"Redis at {url}: no answer within PULSE_REDIS_TIMEOUT_SECONDS (")
            + r".+\); is it overloaded or frozen\?",
        )
    assert line


# --- data --------------------------------------------------------------------------------------------------


def test_rejected_rows_exit_1_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    write_orders(path, [("C1", 1_700_000_000_000, "10.00"), ("C2", 1_700_000_000_000, "ten")])
    result = pulse(tmp_path, "score", path.name, "--out", "p.csv")
    assert result.returncode == EXIT_RUNTIME
    summary, line = result.stderr.splitlines()
    assert summary == "scored 2 rows: 1 customers, 0 VIP, 1 rejected (wrong_type: 1)"
    assert line == (
        "pulse score: orders.csv: 1 of 2 rows rejected; --rejects FILE lists them; --allow-rejects exits 0 anyway"
    )
    allowed = pulse(tmp_path, "score", path.name, "--out", "p.csv", "--allow-rejects")
    assert allowed.returncode == 0 and allowed.stderr.splitlines() == [summary]


def test_fit_on_pilot_data_says_what_is_wrong_and_what_to_do(tmp_path: Path) -> None:
    start = 20_000 * DAY_MS
    few = tmp_path / "pilot.csv"
    write_orders(few, [(f"C{c}", start + (c + 9 * k) * DAY_MS, f"{10 + c}.00") for c in range(6) for k in range(2)])
    one_line(
        pulse(tmp_path, "fit", few.name),
        EXIT_USAGE,
        "fit",
        r"pilot\.csv: only 6 repeat customers \(bought on two days or more\) of 6; a fit needs at least 10 and is "
        r"stable from about 100; the worker scores with the default \(CDNOW\) parameters while there is no "
        r"parameter file, so you can skip pulse fit until the history is longer or has more customers",
    )
    assert not (tmp_path / ".pulse" / "clv-params.json").exists()


def test_fit_names_a_degenerate_gamma_gamma_instead_of_precision_loss(tmp_path: Path) -> None:
    """One price for everything: BG/NBD fits, Gamma-Gamma has no spread (its optimiser ends on "precision
    loss", which is what pulse fit used to print)."""
    from tests.unit.test_clv_fit import synthetic_orders

    days: dict[tuple[str, int], int] = {}
    for customer, at_ms, _ in synthetic_orders(seed=7, customers=120):
        days.setdefault((customer, at_ms // DAY_MS), at_ms)  # one order a day: every mean order value 20.00
    path = tmp_path / "one-price.csv"
    write_orders(path, [(customer, at_ms, "20.00") for (customer, _), at_ms in sorted(days.items())])
    line = one_line(
        pulse(tmp_path, "fit", path.name),
        EXIT_USAGE,
        "fit",
        r"one-price\.csv: Gamma-Gamma is degenerate: the \d+ repeat customers' mean order values hardly vary "
        r"\(mean 20\.00, coefficient of variation 0\.000\), so there is no spread to fit; the worker scores with "
        r"the default \(CDNOW\) parameters while there is no parameter file; fit again on a history whose order "
        r"values vary \(real amounts, not one price\)",
    )
    assert "precision" not in line


def test_fit_says_when_bgnbd_finds_no_stable_fit_on_a_pilot(tmp_path: Path) -> None:
    from tests.unit.test_clv_fit import synthetic_orders

    path = tmp_path / "pilot.csv"
    # 30 customers (21 repeat): more than the fit's minimum, too few for BG/NBD to find an optimum
    write_orders(path, [(c, at, f"{cents / 100:.2f}") for c, at, cents in synthetic_orders(seed=11, customers=30)])
    line = one_line(
        pulse(tmp_path, "fit", path.name),
        EXIT_USAGE,
        "fit",
        r"pilot\.csv: BG/NBD found no stable fit on \d+ repeat customers \(bought on two days or more\) of 30 "
        r"\(about 100 repeat customers are needed\): the data do not tell purchase rates from drop-out; the worker "
        r"scores with the default \(CDNOW\) parameters .+",
    )
    assert "precision" not in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    for result in (pulse(tmp_path, "--debug", "score", "x.csv"), pulse(tmp_path, "score", "x.csv", PULSE_DEBUG="1")):
        assert "Traceback" in result.stderr and "FileNotFoundError" in result.stderr
        assert result.returncode != 0


def test_usage_errors_exit_2_and_version(tmp_path: Path) -> None:
    result = pulse(tmp_path, "score")
    assert result.returncode == EXIT_USAGE and "the following arguments are required: file" in result.stderr
    version = pulse(tmp_path, "--version")
    assert version.returncode == 0 and re.fullmatch(r"pulse \S+\n", version.stdout), version.stdout
