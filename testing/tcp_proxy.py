"""A TCP relay whose target can move, for tests of a failover behind one address.

Managed Redis services (a primary endpoint's DNS name, a Kubernetes Service in front of an operator's primary, a
virtual IP) fail over by pointing the same address at the new primary: new connections reach it, connections
already open stay with the old one, which has become a read-only replica. :class:`SwitchingProxy` plays that
address on loopback: each new connection goes to the current target port, open ones keep theirs.
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
        self._threads = [threading.Thread(target=self._accept, name="proxy-accept", daemon=True)]
        self._threads[0].start()

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
            for src, dst in ((client, upstream), (upstream, client)):
                pipe = threading.Thread(target=self._pipe, args=(src, dst), name="proxy-pipe", daemon=True)
                pipe.start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        """Relay until either side closes (each read ends on data, on EOF or on the socket's close)."""
        try:
            while data := src.recv(CHUNK_BYTES):
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
