"""A TCP relay whose target can move, for tests of a failover behind one address.

Managed Redis services (a primary endpoint's DNS name, a Kubernetes Service in front of an operator's primary, a
virtual IP) fail over by pointing the same address at the new primary: new connections reach it, connections
already open stay with the old one, which has become a read-only replica. :class:`SwitchingProxy` plays that
address on loopback: each new connection goes to the current target port, open ones keep theirs.

:meth:`SwitchingProxy.hold` plays a slow network instead: what clients send is kept until :meth:`release`
(replies to what already went through still come back), so a client's write can be held in flight for as long
as a test needs.
"""

from __future__ import annotations

import socket
import threading

#: how often the accept loop looks at its stop flag
ACCEPT_POLL_SECONDS = 0.2
#: bytes relayed per read
CHUNK_BYTES = 1 << 16


class SwitchingProxy:
    """A relay on a free loopback port to ``127.0.0.1:target``; :meth:`switch` moves the target for new connections."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(ACCEPT_POLL_SECONDS)
        self.port: int = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        #: clear while held: the client-to-target pipes keep what they read until it is set again
        self._flowing = threading.Event()
        self._flowing.set()
        #: requests read while held (each pipe keeps the one read it holds)
        self.held_reads = 0
        self._threads = [threading.Thread(target=self._accept, name="proxy-accept", daemon=True)]
        self._threads[0].start()

    def hold(self) -> None:
        """Keep what clients send from now on (each open and new connection), until :meth:`release`."""
        self.held_reads = 0
        self._flowing.clear()

    def release(self) -> None:
        """Send on what was held, and everything after it."""
        self._flowing.set()

    def switch(self, target: int) -> None:
        """New connections go to ``target`` from now on; open ones stay where they are."""
        self.target = target

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2.0)
            except OSError:
                client.close()  # the target is down: as a refused connection
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, requests in ((client, upstream, True), (upstream, client, False)):
                pipe = threading.Thread(target=self._pipe, args=(src, dst, requests), name="proxy-pipe", daemon=True)
                pipe.start()

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        """Relay until either side closes (each read ends on data, on EOF or on the socket's close); ``requests``
        (client to target) waits while the proxy is held."""
        try:
            while data := src.recv(CHUNK_BYTES):
                if requests and not self._flowing.is_set():
                    self.held_reads += 1
                    while not self._flowing.wait(ACCEPT_POLL_SECONDS):
                        if self._stop.is_set():
                            return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._flowing.set()
        self._server.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()
        self._threads[0].join(timeout=5)

    def __enter__(self) -> SwitchingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
