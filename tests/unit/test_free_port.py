"""free_port: a bindable loopback port below the kernel's ephemeral range (outgoing connections cannot take it)."""

from __future__ import annotations

import socket

from pulse.devstack import FREE_PORT_FLOOR, _ephemeral_start, free_port


def test_ports_are_below_the_ephemeral_range_and_bindable():
    ceiling = _ephemeral_start()
    ports = {free_port() for _ in range(20)}
    assert all(FREE_PORT_FLOOR <= port < ceiling for port in ports)
    assert len(ports) > 1  # random, not one fixed port
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
