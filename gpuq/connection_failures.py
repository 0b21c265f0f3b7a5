"""Why a connection to the API failed, in a few words, from the exception ``requests`` raised.

``requests`` wraps the cause three deep (``ConnectionError`` > urllib3's ``MaxRetryError`` >
``NewConnectionError`` > the socket's own error), and its message is a paragraph of urllib3
internals; a person needs "connection refused" and the URL.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import requests

__all__ = ["describe"]


def describe(error: BaseException) -> tuple[str, bool]:
    """``(reason, refused)``: the failure in words, and whether nothing was there to answer (the connection
    refused, or the host name unknown), which retrying within seconds will not change."""
    causes = list(_causes(error))
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return "connection refused", True
    if any(isinstance(cause, socket.gaierror) for cause in causes):
        return "host name not found", True
    if isinstance(error, requests.ConnectTimeout):
        return "no connection within the timeout", False
    if isinstance(error, requests.Timeout):
        return "no answer within the timeout", False
    if any(isinstance(cause, ConnectionResetError) for cause in causes):
        return "connection reset", False
    return "connection closed or broken", False


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
