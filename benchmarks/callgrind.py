"""Instruction counts of a benchmark's child process under callgrind (load-independent yardstick).

The child (``python -m <module> --child ...``) starts instrumentation off (``--instr-atstart=no``) and wraps
each measured part in a callgrind client request named after it (``timed``, or a part's name), so a dump
per part is written; the totals of each part's dumps are summed here. ``PYTHONHASHSEED=0`` keeps dict and
set iteration, and so the counts, the same from run to run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_TRIGGER = re.compile(r"Trigger: Client Request: (\w+)")
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.M)


def instructions(module: str, args: list[str]) -> dict[str, int]:
    """Instructions per client-request name of ``python -m module *args`` run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        cmd += [sys.executable, "-m", module, *args]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        totals: dict[str, int] = {}
        for dump in Path(tmp).glob("callgrind.out*"):
            text = dump.read_text(errors="replace")
            part, total = _TRIGGER.search(text), _TOTALS.search(text)
            if part and total:
                totals[part.group(1)] = totals.get(part.group(1), 0) + int(total.group(1))
        return totals


def timed_instructions(module: str, args: list[str]) -> int:
    """Instructions of the child's ``timed`` parts (the measured batches)."""
    return instructions(module, args).get("timed", 0)
