"""Outbound HTTP to a checked URL: connected to an address the check returned, never redirected inward.

``tasks.url_safety.check_url`` returns a ``SafeTarget``: the URL's parts,
parsed once, and the addresses its host resolved to, each checked. This
module connects to those addresses only, never to the name: resolving it
again would let a DNS answer that changed since the check (rebinding) send
the request to ``127.0.0.1``. The URL's host still goes where the receiver
needs it: in the ``Host`` header, and for https in the TLS SNI and the
certificate's hostname check, so pinning weakens neither virtual hosting nor
TLS.

A call ends by its deadline, whatever the receiver does. urllib3's read
timeout bounds each read, not the answer: a receiver that sends a byte now
and then would hold the caller for as long as it likes. So each call has a
total deadline; when it passes, the connection is shut down, which ends the
read (or write, or TLS handshake) waiting on it. Each address is given the
connect timeout or what is left of the deadline, whichever is less, and the
next address is tried when one refuses or does not accept in time.

Redirects are not followed (a ``3xx`` is an answer like any other: a redirect
to an internal address would bypass the check). No proxy from the
environment is used (urllib3 reads none), and nothing parses the URL again.
Each call opens its own connection and closes it: a webhook is a few
requests a job, not worth a pool that would have to be keyed by address.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import certifi
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError

from tasks.url_safety import SafeTarget

__all__ = ["OutboundError", "PinnedHttp", "Reply"]


class OutboundError(Exception):
    """The request got no answer: no connection, a timeout, a TLS or protocol failure."""


@dataclass(frozen=True)
class Reply:
    status: int
    #: Case-insensitive, as the receiver sent them.
    headers: Mapping[str, str]


class PinnedHttp:
    """POSTs to a ``SafeTarget`` at one of its checked addresses, within a total deadline per call."""

    def __init__(self, connect_timeout: float, read_timeout: float, ca_certs: str | None = None,
                 deadline: float | None = None):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: Seconds a call may last in all, connecting and answering; by default both timeouts together.
        self.deadline = deadline if deadline is not None else connect_timeout + read_timeout
        self.ca_certs = ca_certs or certifi.where()

    def post(self, target: SafeTarget, body: bytes, headers: Mapping[str, str]) -> Reply:
        """The receiver's answer; the next checked address is tried only when one cannot be connected to."""
        unreachable: list[str] = []
        with _Deadline(self.deadline) as deadline:
            for address in target.addresses:
                if deadline.passed:
                    break
                try:
                    reply = self._post_to(address, target, body, {**headers, "Host": target.host_header}, deadline)
                    if not deadline.passed:  # else it may be cut short: an end of headers where the cut came
                        return reply
                except ConnectTimeoutError as error:  # refused or not accepted in time (NewConnectionError too)
                    unreachable.append(f"{address}: {_reason(error)}")
                except (HTTPError, OSError) as error:
                    if not deadline.passed:
                        raise OutboundError(f"{type(error).__name__}: {_reason(error)}") from None
            if deadline.passed:
                raise OutboundError(f"timed out: no answer within {self.deadline:g} s in all"
                                    + (f" ({'; '.join(unreachable)})" if unreachable else ""))
        raise OutboundError("could not connect: " + "; ".join(unreachable))

    def _post_to(self, address: str, target: SafeTarget, body: bytes, headers: dict[str, str],
                 deadline: _Deadline) -> Reply:
        left = deadline.left()
        timeout = Timeout(connect=min(self.connect_timeout, left), read=min(self.read_timeout, left))
        pool = self._pool(address, target, timeout, deadline)
        try:
            response = pool.urlopen("POST", target.request_uri, body=body, headers=headers, redirect=False,
                                    retries=False, preload_content=False, assert_same_host=False)
            try:
                return Reply(response.status, response.headers)
            finally:
                response.close()  # the body is not read: the status says what a webhook needs
        finally:
            pool.close()

    def _pool(self, address: str, target: SafeTarget, timeout: Timeout, deadline: _Deadline) -> HTTPConnectionPool:
        if target.scheme == "https":
            return _DeadlineHttpsPool(address, target.port, timeout=timeout, maxsize=1, retries=False,
                                      cert_reqs="CERT_REQUIRED", ca_certs=self.ca_certs,
                                      server_hostname=target.host, assert_hostname=target.host, deadline=deadline)
        return _DeadlineHttpPool(address, target.port, timeout=timeout, maxsize=1, retries=False, deadline=deadline)


class _Deadline:
    """Shuts down every connection of one call once ``seconds`` have passed since it began."""

    def __init__(self, seconds: float):
        self._ends = time.monotonic() + seconds
        self._shut_down = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._shut_all)
        self._timer.daemon = True

    @property
    def passed(self) -> bool:
        return self._shut_down or time.monotonic() >= self._ends

    def left(self) -> float:
        return max(0.0, self._ends - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it has)."""
        # A duplicate of the descriptor, because TLS wraps the socket into a new object and detaches this
        # one; shutting the duplicate down ends the connection under both.
        duplicate = sock.dup()
        with self._lock:
            self._sockets.append(duplicate)
            if self._shut_down:
                _shut(duplicate)

    def _shut_all(self) -> None:
        with self._lock:
            self._shut_down = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


class _Watched:
    """A connection whose socket its call's deadline can shut down, from the moment it is connected."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        self._deadline.watch(sock)
        return sock


class _WatchedConnection(_Watched, HTTPConnection):
    pass


class _WatchedHttpsConnection(_Watched, HTTPSConnection):
    pass


class _DeadlineHttpPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _DeadlineHttpsPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHttpsConnection


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected any more: nothing to end
        pass


def _reason(error: BaseException) -> str:
    if reason := getattr(error, "reason", None):
        return str(reason)
    if isinstance(error, ConnectTimeoutError) and error.__cause__ is not None:
        return str(error.__cause__)  # the socket's own words; urllib3's add the connection object's repr
    return str(error)
