"""free_port: a bindable loopback port below the kernel's ephemeral range (outgoing connections cannot take it),
reserved against every other picker on the box until its server has had time to bind it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from pulse import devstack
from pulse.devstack import FREE_PORT_FLOOR, _ephemeral_start, free_port


@pytest.fixture
def reservations(tmp_path, monkeypatch):
    """A reservation folder of the test's own, so the test neither sees nor leaves the box's reservations."""
    folder = tmp_path / "ports"
    monkeypatch.setattr(devstack, "port_reservations", lambda: folder)
    return folder


def test_ports_are_below_the_ephemeral_range_and_bindable(reservations):
    ceiling = _ephemeral_start()
    ports = {free_port() for _ in range(20)}
    assert all(FREE_PORT_FLOOR <= port < ceiling for port in ports)
    assert len(ports) == 20  # random, and each one reserved: never handed out twice
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    assert {int(p.name) for p in reservations.iterdir() if p.name.isdigit()} == ports


class _Draws:
    """random.SystemRandom stand-in whose draws are given: two pickers that draw the same port."""

    def __init__(self, draws: list[int]) -> None:
        self.draws = draws

    def __call__(self) -> _Draws:
        return self

    def randrange(self, start: int, stop: int) -> int:
        return self.draws.pop(0)


def test_a_port_picked_and_not_yet_bound_is_not_handed_out_again(reservations, monkeypatch):
    ceiling = _ephemeral_start()
    first, second = FREE_PORT_FLOOR + 7, FREE_PORT_FLOOR + 11
    if ceiling - FREE_PORT_FLOOR <= 1000 or not all(devstack._bindable(p) for p in (first, second)):
        pytest.skip("this box's ports below the ephemeral range are not free here")
    monkeypatch.setattr(devstack.random, "SystemRandom", _Draws([first, first, second]))
    assert free_port() == first
    # its server has not bound it yet (the 0d254a1 clone's race): a bind test alone would hand it out again
    assert free_port() == second


def test_a_reservation_expires(reservations, monkeypatch):
    port = free_port()
    old = time.time() - devstack.PORT_RESERVATION_SECONDS - 1
    os.utime(reservations / str(port), (old, old))
    monkeypatch.setattr(devstack.random, "SystemRandom", _Draws([port]))
    assert free_port() == port  # the stale reservation was dropped, the port is free again


def test_processes_picking_at_once_never_share_a_port(tmp_path):
    """Four processes pick 40 ports each at the same moment, through the box's shared reservation folder (the
    test's own, by TMPDIR): no port is handed to two of them."""
    code = (
        "from pulse.devstack import free_port\n"
        "import sys, time\n"
        "start = float(sys.argv[1])\n"
        "time.sleep(max(0.0, start - time.time()))\n"
        "print(' '.join(str(free_port()) for _ in range(40)))\n"
    )
    start = time.time() + 1.5
    env = {"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(start)], stdout=subprocess.PIPE, env=env) for _ in range(4)
    ]
    picks = [proc.communicate(timeout=60)[0].split() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    every = [int(p) for pick in picks for p in pick]
    assert len(every) == 160 and len(set(every)) == 160
