"""A TCP proxy under a test's control, to cut a process off from Redis as a network partition would.

``cut()`` stops relaying: bytes sent either way stay unanswered (no reset, no
refusal), so the cut-off side hangs until its own timeouts fire, as it would
behind a dead switch. New connections are accepted and left silent too.
``restore()`` drops every connection made before it (their streams are
half-sent and out of step) and relays new ones again, as a client's
reconnect after a partition finds.
"""

from __future__ import annotations

import select
import socket
import threading
import time

from gpuq.redis_server import free_port

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._generation = 0
        self._lock = threading.Lock()
        self._sockets: list[tuple[int, socket.socket]] = []
        self._thread = threading.Thread(target=self._accept_forever, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        with self._lock:
            self._generation += 1
            stale, self._sockets = self._sockets, []
        for _, sock in stale:
            _close(sock)
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.restore()
        _close(self._listener)

    def _accept_forever(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                generation = self._generation
                self._sockets.append((generation, client))
            threading.Thread(target=self._serve, args=(client, generation), daemon=True).start()

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._closed.is_set()

    def _serve(self, client: socket.socket, generation: int) -> None:
        while self._cut.is_set() and self._current(generation):  # accepted during a cut: silent until restore
            time.sleep(0.05)
        if not self._current(generation):
            _close(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._sockets.append((generation, upstream))
        peers = {client: upstream, upstream: client}
        try:
            while self._current(generation):
                if self._cut.is_set():
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
