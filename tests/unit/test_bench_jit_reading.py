"""``pulse bench`` reads how much of a JVM broker's CPU its just-in-time compiler took.

A Kafka broker started for the bench compiles its hot code while the phases run (about half its CPU in an
unwarmed full phase, docs/benchmarks.md, session 19), so the bench reports that share beside the servers' CPU
and warms the JVM up first. Here: a real JVM's compiler threads are found by their HotSpot names and read, and a
process without them (this Python, Tansu, Redis) reads None, not 0. ``benchmarks`` is a layer tests do not import
([tool.importlinter]), so the checks run in a child interpreter of the checkout, as ``pulse bench`` does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testing.stack import REPO

#: a JVM that keeps its compilers busy for a while: enough loop iterations to be compiled by C1 and C2
BUSY_JAVA = """
public class Busy {
    public static void main(String[] args) throws Exception {
        long sum = 0;
        for (int round = 0; round < 200; round++) {
            for (int i = 0; i < 2_000_000; i++) { sum += Integer.toString(i ^ round).hashCode(); }
        }
        System.out.println(sum);
        Thread.sleep(60_000);
    }
}
"""
#: how long the JVM gets to start its compiler threads and compile the loop (the bound of the wait below)
JVM_READY_SECONDS = 60.0


def read_jit(pid: int) -> float | None:
    code = f"from benchmarks.phases.common import jit_cpu_seconds; print(jit_cpu_seconds({pid}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    text = out.stdout.strip()
    return None if text == "None" else float(text)


def test_a_process_without_compiler_threads_reads_none():
    python = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert read_jit(python.pid) is None
    finally:
        python.kill()
        python.wait(10)


@pytest.mark.skipif(shutil.which("java") is None, reason="no JDK on this machine")
def test_a_jvm_s_compiler_threads_are_read(tmp_path: Path):
    source = tmp_path / "Busy.java"
    source.write_text(textwrap.dedent(BUSY_JAVA))
    jvm = subprocess.Popen(["java", "-XX:+UseSerialGC", str(source)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + JVM_READY_SECONDS
        seconds = None
        while time.monotonic() < deadline:
            seconds = read_jit(jvm.pid)
            if seconds is not None and seconds > 0:
                break
            time.sleep(0.5)
        assert seconds is not None and seconds > 0, "the JVM's C1/C2 compiler threads were not found or took no CPU"
    finally:
        jvm.kill()
        jvm.wait(10)
