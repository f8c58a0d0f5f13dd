"""The command line's surface (issue 17): every option has help, ``pulse config --effective`` pastes back,
``pulse score`` takes Excel exports, lists its rejects and streams its input, and the worker says which CLV
parameters it scores with."""

from __future__ import annotations

import argparse
import csv
import os
import pty
import shlex
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from pulse import cli
from pulse_config.clv_params import load_clv_params, save_clv_params
from pulse_config.settings import Settings
from scoring.clv import DEFAULT_CLV_PARAMS
from streams.worker import clv_params_line
from testing.stack import REPO


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("PULSE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PULSE_ENV_FILE", "")


def parsers(parser: argparse.ArgumentParser, path: str = "pulse") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_every_option_and_argument_has_help() -> None:
    missing, seen = [], 0
    for path, parser in parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            seen += 1
            if action.help == argparse.SUPPRESS:
                continue  # deliberately hidden (an internal option of a harness)
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert seen > 30  # the walk reached the sub-commands
    assert not missing, f"options without help: {missing}"
    # `pulse bench` passes its arguments to `python -m benchmarks` (a layer above the CLI, not imported by it
    # nor by the tests): its parser is walked in a subprocess
    walk = (
        "import argparse, sys; from benchmarks.harness import add_arguments; p = argparse.ArgumentParser(); "
        "add_arguments(p); bad = [a.dest for a in p._actions if not isinstance(a, argparse._HelpAction) "
        "and a.help != argparse.SUPPRESS and not (a.help or '').strip()]; print(len(p._actions)); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", walk], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and int(done.stdout) > 10, done.stdout + done.stderr
    # and every sub-command says what it does in `pulse --help`
    subs = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert all(choice.help for choice in subs._choices_actions)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"pulse {cli.version()}"


#: a value other than the default for every setting whose type is not plain text or a number: what pasting
#: back breaks when it is printed as Python (lists, maps, tuples, decimals, booleans, secrets, empty strings)
NON_DEFAULTS = {
    "PULSE_RFM_SEGMENTS": '[{"name": "loyal", "r": [3, 5], "f": [4, 5], "m": [1, 5]}, '
    '{"name": "rest", "r": [1, 5], "f": [1, 5], "m": [1, 5]}]',
    "PULSE_VIP_SEGMENTS": '["high_value", "loyal one"]',
    "PULSE_FX_RATES": '{"EUR": "1.08", "GBP": "1.27"}',
    "PULSE_CHURN_WEIGHTS": '{"overdue": 30, "detractor": 20}',
    "PULSE_GC_THRESHOLDS": "[1000, 5, 5]",
    "PULSE_TEST_FAIL_EVENT_IDS": '["a b", "it\'s"]',
    "PULSE_DEFAULT_GROSS_MARGIN": "0.25",
    "PULSE_CHANGELOG_END_MARKERS": "false",
    "PULSE_APP_ID": "pulse with spaces & $signs",
    "PULSE_ROUTER_GROUP": "",
    "PULSE_API_TOKEN": "",
    "PULSE_BROKER_URL": "kafka://a:9092;b:9092",
}


def test_config_effective_pastes_back_into_the_variables_and_an_env_file(env, tmp_path: Path, capsys) -> None:
    for name, value in NON_DEFAULTS.items():
        os.environ[name] = value
    original = Settings(_env_file=None)
    assert cli.main(["config", "--effective"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert len(lines) == len(Settings.model_fields)
    for name in NON_DEFAULTS:
        os.environ.pop(name)

    # 1. a shell: each line is one word of `export` (shell quoting), the value what the variable takes
    pasted = dict(shlex.split(line)[0].split("=", 1) for line in lines)
    assert Settings(_env_file=None, **{}).model_dump() != original.model_dump()
    os.environ.update(pasted)
    try:
        assert Settings(_env_file=None).model_dump() == original.model_dump()
    finally:
        for name in pasted:
            os.environ.pop(name)
    # 2. an env file (.pulse/dev.env, PULSE_ENV_FILE): the same lines as they are
    (tmp_path / "pasted.env").write_text(printed)
    assert Settings(_env_file=str(tmp_path / "pasted.env")).model_dump() == original.model_dump()
    # lists and maps are JSON, not Python
    assert 'PULSE_VIP_SEGMENTS=\'["high_value","loyal one"]\'' in lines
    assert "PULSE_GC_THRESHOLDS='[1000,5,5]'" in lines


def test_config_effective_does_not_print_a_secret(env, capsys) -> None:
    os.environ["PULSE_API_TOKEN"] = "s3cret"
    try:
        assert cli.main(["config", "--effective"]) == 0
    finally:
        os.environ.pop("PULSE_API_TOKEN")
    out = capsys.readouterr().out
    assert "s3cret" not in out and "# PULSE_API_TOKEN is set (not shown)" in out.splitlines()


# --- pulse score -------------------------------------------------------------------------------------------

END = datetime(2025, 6, 1, tzinfo=UTC)


def order_lines(customers: int, orders_each: int) -> Iterator[str]:
    """An order CSV body: each customer's orders spread round the year (a week apart, wrapping), so that two
    files with the same customers and more orders each hold the same bounded state (purchase days, weekly
    revenue buckets and recent event ids all reach their caps in both)."""
    n = 0
    for k in range(orders_each):
        for c in range(customers):
            at = END - timedelta(days=(7 * k + c % 7) % 364, minutes=c)
            n += 1
            yield f"C{c:04d},{at.isoformat()},{10 + (c * 7 + k) % 90}.{k % 100:02d},O{n}\n"


def write_order_file(path: Path, customers: int, orders_each: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("customer_id,occurred_at,amount,order_id\n")
        f.writelines(order_lines(customers, orders_each))


def test_score_reads_excel_exports_bom_and_crlf(env, tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    write_order_file(plain, 20, 3)
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    assert cli.main(["score", str(plain), "--out", "plain-out.csv"]) == 0
    assert cli.main(["score", str(excel), "--out", "excel-out.csv"]) == 0
    assert (tmp_path / "excel-out.csv").read_text() == (tmp_path / "plain-out.csv").read_text()
    # JSON lines as well
    jsonl = tmp_path / "events.jsonl"
    event = {"event_id": "s1", "customer_id": "C1", "occurred_at": "2025-01-01T00:00:00Z", "nps": 9}
    jsonl.write_bytes(b"\xef\xbb\xbf" + orjson.dumps({"kind": "survey", "event": event}) + b"\r\n")
    assert cli.main(["score", str(jsonl), "--out", "jsonl-out.csv"]) == 0


def test_score_rejects_file_lists_line_reason_and_detail(env, tmp_path: Path, capsys) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text(
        "customer_id,occurred_at,amount,currency\n"
        "C1,2025-01-01T00:00:00Z,10.00,USD\n"
        "C2,2025-01-02T00:00:00Z,ten,USD\n"
        "C3,2025-01-03T00:00:00Z,5.00,XYZ\n"
        "C4,not a date,5.00,USD\n"
    )
    events = tmp_path / "events.jsonl"
    good = {"event_id": "s1", "customer_id": "C1", "occurred_at": "2025-01-01T00:00:00Z", "nps": 9}
    events.write_bytes(
        b"\n".join(orjson.dumps({"kind": "survey", "event": e}) for e in (good, {**good, "event_id": "s2", "nps": 11}))
    )
    rejects = tmp_path / "rejects.csv"
    args = ["score", str(orders), str(events), "--out", "o.csv", "--rejects", str(rejects)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "4 rejected" in err and f"{rejects} lists them (file, line, reason, detail)" in err
    with rejects.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["line"], r["kind"], r["reason"]) for r in rows] == [
        (str(orders), "3", "order", "wrong_type"),
        (str(orders), "4", "order", "unsupported_currency"),
        (str(orders), "5", "order", "invalid_time"),
        (str(events), "2", "survey", "out_of_range"),
    ]
    assert rows[0]["detail"].startswith("amount:") and "PULSE_FX_RATES" in rows[1]["detail"]


def test_score_draws_a_progress_bar_only_on_a_terminal(env, tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    write_order_file(orders, 50, 4)
    command = [sys.executable, "-m", "pulse", "score", str(orders), "--out", "o.csv"]
    run_env = {**os.environ, "PULSE_ENV_FILE": ""}
    piped = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert piped.returncode == 0 and piped.stderr == "scored 200 rows: 50 customers, 3 VIP, 0 rejected\n"
    leader, follower = pty.openpty()
    try:
        tty = subprocess.run(
            command, env=run_env, stderr=follower, stdout=subprocess.DEVNULL, timeout=120, cwd=tmp_path
        )
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side closed, all read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert tty.returncode == 0
    assert b"\rscore [" in drawn and b"200/200" in drawn and b"scored 200 rows" in drawn


#: growth of the peak per extra row of input that streaming allows (holding the rows costs ~4,300)
MAX_BYTES_PER_EXTRA_ROW = 500
#: orders per customer in the smaller file (the larger has four times as many): 9,000 extra rows, where holding
#: them would add ~39 MB and streaming adds under 1 MB (60 until session 25: 47-80 s of the suite under tracemalloc)
SMALL_ORDERS_EACH = 30


def score_peak(path: Path) -> int:
    tracemalloc.start()
    try:
        assert cli.main(["score", str(path), "--out", "out.csv"]) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_score_memory_does_not_grow_with_the_file(env, tmp_path: Path, capsys) -> None:
    """Same customers, four times the rows: the peak is the states', not the input's.

    Measured on this test's files: reading every row first (the reader before issue 17) grew the peak by
    ~4,300 bytes per extra row; streaming, by ~50 (the processor's own per-event bookkeeping)."""
    customers = 100
    warm, small, large = tmp_path / "warm.csv", tmp_path / "small.csv", tmp_path / "large.csv"
    write_order_file(warm, 10, 2)
    write_order_file(small, customers, SMALL_ORDERS_EACH)
    write_order_file(large, customers, 4 * SMALL_ORDERS_EACH)
    score_peak(warm)  # imports and caches are not the file's
    peak_small, peak_large = score_peak(small), score_peak(large)
    per_row = (peak_large - peak_small) / (3 * SMALL_ORDERS_EACH * customers)
    assert "0 rejected" in capsys.readouterr().err
    with capsys.disabled():
        print(
            f"peak traced memory: {peak_small / 1e6:.1f} MB for {SMALL_ORDERS_EACH * customers} rows, "
            f"{peak_large / 1e6:.1f} MB for {4 * SMALL_ORDERS_EACH * customers} rows "
            f"({large.stat().st_size / 1e6:.1f} MB file): "
            f"{per_row:.0f} bytes per extra row"
        )
    # far below what holding a row takes (its bytes, its event, its record: over a kilobyte)
    assert per_row < MAX_BYTES_PER_EXTRA_ROW


# --- the worker's first line --------------------------------------------------------------------------------


def test_the_worker_says_which_clv_parameters_it_loaded(env, tmp_path: Path) -> None:
    settings = Settings(_env_file=None)
    line = clv_params_line(settings, load_clv_params(settings.clv_params_file))
    bg = DEFAULT_CLV_PARAMS.bgnbd
    assert line.startswith("CLV parameters: the defaults (no file at .pulse/clv-params.json")
    assert f"r={bg.r:.6g} alpha={bg.alpha:.6g}" in line
    fitted = DEFAULT_CLV_PARAMS.__class__(
        bgnbd=bg.__class__(r=0.5, alpha=2.0, a=0.7, b=3.0),
        gamma_gamma=DEFAULT_CLV_PARAMS.gamma_gamma,
        time_unit_days=1.0,
        fitted_on="orders.csv, 120 customers, as of 2026-06-01",
    )
    save_clv_params(fitted, ".pulse/clv-params.json")
    line = clv_params_line(settings, load_clv_params(settings.clv_params_file))
    assert line.startswith(
        "CLV parameters from .pulse/clv-params.json (fitted on orders.csv, 120 customers, as of 2026-06-01): "
        "BG/NBD r=0.5 alpha=2 a=0.7 b=3, Gamma-Gamma p="
    )
    assert line.endswith("time unit 1 days")
