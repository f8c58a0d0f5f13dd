"""``pulse bench`` lives in benchmarks/, which is not installed: a checkout runs it, a package says why not.

The installed side is exercised for real by tests/e2e/test_installed_wheel.py; here the parser's two
shapes, quickly, in the checkout.
"""

from __future__ import annotations

import pytest

from pulse import cli


def test_bench_in_a_checkout_has_the_harness_arguments(capfd):
    # python -m benchmarks of the checkout prints its help (the CLI starts it, it does not import it)
    assert cli.main(["bench", "--help"]) == 0
    assert "--events" in capfd.readouterr().out


def test_bench_without_a_checkout_says_so_whatever_the_arguments(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_checkout", lambda: None)
    assert cli.main(["bench", "--events", "10", "--json"]) == 2
    assert capsys.readouterr().err.strip() == cli.BENCH_NEEDS_CHECKOUT


def test_other_commands_still_reject_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["config", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
