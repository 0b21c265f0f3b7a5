"""Why a connection to the API failed, in a few words, from the exception ``requests`` raised.

``requests`` wraps the cause three deep (``ConnectionError`` > urllib3's ``MaxRetryError`` >
``NewConnectionError`` > the socket's own error), and its message is a paragraph of urllib3
internals; a person needs "connection refused" and the URL.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import requests
import urllib3

__all__ = ["describe", "was_connected"]

# The resolver's answers that a host name does not exist, which a retry within seconds will not change;
# any other (EAI_AGAIN: the DNS server did not answer in time) is temporary.
_UNKNOWN_HOST = frozenset(getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name))


def describe(error: BaseException) -> tuple[str, bool]:
    """``(reason, refused)``: the failure in words, and whether nothing was there to answer (the connection
    refused, or the host name unknown), which retrying within seconds will not change."""
    causes = list(_causes(error))
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return "connection refused", True
    lookups = [cause for cause in causes if isinstance(cause, socket.gaierror)]
    if any(lookup.errno in _UNKNOWN_HOST for lookup in lookups):
        return "host name not found", True
    if lookups:
        return "host name lookup failed for now", False
    if isinstance(error, requests.ConnectTimeout):
        return "no connection within the timeout", False
    if isinstance(error, requests.Timeout):
        return "no answer within the timeout", False
    if any(isinstance(cause, ConnectionResetError) for cause in causes):
        return "connection reset", False
    return "connection closed or broken", False


def was_connected(error: BaseException) -> bool:
    """Whether the failed request had got a connection before it failed (a reset, a closed connection, no
    answer in time): then something listened at the address. urllib3 raises its ``ConnectTimeoutError``
    (``NewConnectionError`` is one) for every failure to connect."""
    if isinstance(error, requests.ConnectTimeout):
        return False
    return not any(isinstance(cause, urllib3.exceptions.ConnectTimeoutError) for cause in _causes(error))


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and every exception under it: causes, contexts, urllib3's ``reason`` and exception args."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))
