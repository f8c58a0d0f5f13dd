"""The documentation stays true to the repository: links resolve, the README stays short, and the reference
names only settings, variables and metrics that exist.

A renamed file, heading, setting or metric leaves a doc pointing at nothing, which nobody notices until a
newcomer follows it; here it fails a test. Pure file reading: no broker, no Redis.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import REGISTRY

import streams.metrics  # noqa: F401 - registers every metric of the worker
from pulse_config.settings import Settings
from streams.metrics import ROUTER_REGISTRY

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: the README is the five-minute page; the reference lives in docs/
README_MAX_LINES = 200
#: every Markdown page of the repository's own documentation
PAGES = sorted([README, *(ROOT / "docs").rglob("*.md"), ROOT / "deploy" / "README.md"])
#: the reference pages, held to naming only real settings and metrics (architecture.md, benchmarks.md and
#: reliability.md are also a record of past sessions: they may name what was measured then)
REFERENCE_PAGES = ("events", "profile", "scoring", "indicators", "alerts", "delivery-guarantee", "operations")
REFERENCE = [README, *(ROOT / "docs" / f"{name}.md" for name in (*REFERENCE_PAGES, "settings", "development"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
ENV_VAR = re.compile(r"\bPULSE_[A-Z0-9_]*[A-Z0-9]\b")
METRIC = re.compile(r"\bpulse_[a-z_]*[a-z]\b")


def source_files(*suffixes: str) -> Iterator[Path]:
    """The repository's own files with these suffixes (hidden folders such as .venv and .git skipped)."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__" and not d.endswith(".egg-info")]
        yield from (Path(folder, f) for f in files if f.endswith(suffixes))


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code: links and headings are only in the prose."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (letters of any script, digits,
    ``_`` and ``-`` kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor of a Markdown page; a repeated heading gets ``-1``, ``-2``… as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file (or, in a Markdown file, heading) does not exist."""
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def test_readme_is_a_five_minute_page():
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move reference material into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    assert not broken_links(page)


def test_the_link_check_finds_a_broken_file_and_a_broken_anchor(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The clock: no decision on unread time\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#the-clock-no-decision-on-unread-time) [ok](#here)\n\n# Here\n\n"
        "[gone](missing.md) [gone](other.md#the-clock) `[code](missing.md)` [web](https://example.com/x.md)\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "other.md#the-clock: no heading with that anchor"]


def test_slug_follows_github():
    assert slug("Churn warning (客戶流失預警)") == "churn-warning-客戶流失預警"
    assert slug("Population-relative scores and the sweep (built for RFM/VIP)") == (
        "population-relative-scores-and-the-sweep-built-for-rfmvip"
    )
    assert slug("Histories from files: `pulse replay` and `pulse score`") == (
        "histories-from-files-pulse-replay-and-pulse-score"
    )


def _settings_doc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_doc_is_generated_from_the_code():
    settings_doc = _settings_doc()
    text = settings_doc.DOC.read_text()
    assert settings_doc.render(text) == text, "regenerate it: .venv/bin/python scripts/settings_doc.py"
    for name in Settings.model_fields:
        assert f"`PULSE_{name.upper()}`" in text


@cache
def variables_the_code_reads() -> frozenset[str]:
    """``PULSE_*`` names written in the code and scripts (env vars of tests, setup and the dev stack)."""
    found: set[str] = set()
    for path in source_files(".py", ".sh"):
        if path != Path(__file__):
            found.update(ENV_VAR.findall(path.read_text(errors="replace")))
    return frozenset(found)


@pytest.mark.parametrize("page", REFERENCE, ids=lambda p: str(p.relative_to(ROOT)))
def test_reference_names_only_real_variables(page: Path):
    settings = {f"PULSE_{name.upper()}" for name in Settings.model_fields}
    named = set(ENV_VAR.findall(page.read_text()))
    unknown = sorted(n for n in named - settings - variables_the_code_reads() if not n.endswith("_"))
    assert not unknown, f"{page.name} names variables nothing reads: {unknown}"


#: Python packages whose names look like metric names.
PACKAGES = {"pulse_config"}


def metric_families() -> set[str]:
    return {
        m.name for registry in (REGISTRY, ROUTER_REGISTRY) for m in registry.collect() if m.name.startswith("pulse_")
    }


def documented_family(name: str, families: set[str]) -> str | None:
    """The registered family a documented sample name belongs to (``pulse_x_total`` is family ``pulse_x``)."""
    for suffix in ("", "_total", "_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in families:
            return name.removesuffix(suffix)
    return None


@pytest.mark.parametrize("page", REFERENCE, ids=lambda p: str(p.relative_to(ROOT)))
def test_reference_names_only_real_metrics(page: Path):
    families = metric_families()
    named = set(METRIC.findall(page.read_text())) - PACKAGES
    unknown = sorted(n for n in named if documented_family(n, families) is None)
    assert not unknown, f"{page.name} names metrics the code does not register: {unknown}"


def test_every_metric_is_documented():
    """Each metric the worker or the router registers is explained in the operations or the alerts page."""
    families = metric_families()
    text = "".join((ROOT / "docs" / n).read_text() for n in ("operations.md", "alerts.md"))
    documented = {documented_family(n, families) for n in METRIC.findall(text)}
    assert not sorted(families - documented)


def test_every_profile_field_is_documented():
    """docs/profile.md explains every field a profile hash (and the API's JSON) carries, and no other."""
    from schemas.profile import CustomerProfile

    text = (ROOT / "docs" / "profile.md").read_text()
    table = text[text.index("| fields | meaning |") : text.index("\n\n", text.index("| fields | meaning |"))]
    named = set(re.findall(r"`([a-z_]+)`", "".join(line.split("|")[1] for line in table.splitlines()[2:])))
    assert named == set(CustomerProfile.model_fields) - {"customer_id"}


def test_every_command_is_in_the_command_tables():
    """Each `pulse` subcommand has a row in the README's and docs/development.md's command tables."""
    import argparse

    from pulse.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(actions[0].choices)
    for page in (README, ROOT / "docs" / "development.md"):
        rows = [line for line in page.read_text().splitlines() if line.startswith("| `pulse ")]
        listed = {m for row in rows for m in re.findall(r"`pulse ([a-z]+)", row.split("|")[1])}
        assert listed == commands, f"{page.name}: missing {commands - listed}, unknown {listed - commands}"


def test_pulse_score_columns_are_documented():
    """docs/events.md lists the columns of `pulse score --out` as the code writes them, in order."""
    from pulse.history import PROFILE_COLUMNS

    text = " ".join((ROOT / "docs" / "events.md").read_text().split())
    assert "`" + ", ".join(PROFILE_COLUMNS) + "`" in text


def test_the_readme_example_order_is_valid():
    """The one event a newcomer copies is accepted by the worker's strict decoder, as written."""
    from schemas.events import Kind, OrderEvent, decode_event

    block = re.search(r"```json\n(.*?)```", README.read_text(), re.S)
    assert block
    event = decode_event(Kind.ORDER, block.group(1).encode(), Settings().max_event_bytes)
    assert isinstance(event, OrderEvent)


def test_the_domain_spec_is_vendored():
    """The repository is complete on its own: the spec is in docs/spec, nothing points outside the checkout."""
    assert (ROOT / "docs" / "spec" / "customer-value.md").is_file()
    outside = [
        str(p.relative_to(ROOT))
        for p in source_files(".py", ".md", ".toml", ".sh", ".yaml", ".yml")
        if p != Path(__file__) and "shared/spec" in p.read_text(errors="replace")
    ]
    assert not outside, f"these refer to ../shared/spec, not the vendored docs/spec: {outside}"
