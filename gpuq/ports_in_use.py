"""Which of the ports a stack is about to listen on something else already holds.

Checked before anything starts, so that ``gpuq up`` refuses whole rather than
half-starting next to a stack that is still running: the API's gunicorn binds
with SO_REUSEPORT, so a second one would even share the port with the first
and clients would reach either at random.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

__all__ = ["Listener", "in_use", "refusal"]


@dataclass(frozen=True)
class Listener:
    """A port a part of the stack will listen on, and the variable that moves it."""

    what: str
    host: str
    port: int
    variable: str

    def describe(self) -> str:
        return f"port {self.port} ({self.what}, on {self.host}) is already in use: set {self.variable} to a free port"


def _taken(host: str, port: int) -> bool:
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            # SO_REUSEADDR as servers set it: a connection of a stopped server lingering in
            # TIME_WAIT is no obstacle, a listening socket is. No SO_REUSEPORT: it would let
            # this bind succeed beside a gunicorn that set it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                # Any other refusal (an address not on this machine, a privileged port) is the
                # server's own to report when it starts.
                if error.errno == errno.EADDRINUSE:
                    return True
    return False


def in_use(listeners: list[Listener]) -> list[Listener]:
    return [listener for listener in listeners if _taken(listener.host, listener.port)]


def refusal(taken: list[Listener]) -> str:
    """What to tell someone whose ports are taken, most likely by a stack that is still running."""
    lines = [listener.describe() for listener in taken]
    lines.append(f"nothing was started. Is an earlier `gpuq up` still running? Stop it (Ctrl-C in its terminal), "
                 f"or find what holds the port with `ss -ltnp 'sport = :{taken[0].port}'`")
    return "\n".join(lines)
