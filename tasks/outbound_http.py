"""Outbound HTTP to a checked URL: connected to an address the check returned, never redirected inward.

``tasks.url_safety.check_url`` returns a ``SafeTarget``: the URL's parts,
parsed once, and the addresses its host resolved to, each checked. This
module connects to those addresses only, never to the name: resolving it
again would let a DNS answer that changed since the check (rebinding) send
the request to ``127.0.0.1``. The URL's host still goes where the receiver
needs it: in the ``Host`` header, and for https in the TLS SNI and the
certificate's hostname check, so pinning weakens neither virtual hosting nor
TLS.

Redirects are not followed (a ``3xx`` is an answer like any other: a redirect
to an internal address would bypass the check). No proxy from the
environment is used (urllib3 reads none), and nothing parses the URL again.
Each call opens its own connection and closes it: a webhook is a few
requests a job, not worth a pool that would have to be keyed by address.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import certifi
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.exceptions import HTTPError, NewConnectionError

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
    """POSTs to a ``SafeTarget`` at one of its checked addresses."""

    def __init__(self, connect_timeout: float, read_timeout: float, ca_certs: str | None = None):
        self.timeout = Timeout(connect=connect_timeout, read=read_timeout)
        self.ca_certs = ca_certs or certifi.where()

    def post(self, target: SafeTarget, body: bytes, headers: Mapping[str, str]) -> Reply:
        """The receiver's answer; the next checked address is tried only when one refuses the connection."""
        refused: list[str] = []
        for address in target.addresses:
            try:
                return self._post_to(address, target, body, {**headers, "Host": target.host_header})
            except NewConnectionError as error:
                refused.append(f"{address}: {_reason(error)}")
            except (HTTPError, OSError) as error:
                raise OutboundError(f"{type(error).__name__}: {_reason(error)}") from None
        raise OutboundError("could not connect: " + "; ".join(refused))

    def _post_to(self, address: str, target: SafeTarget, body: bytes, headers: dict[str, str]) -> Reply:
        pool = self._pool(address, target)
        try:
            response = pool.urlopen("POST", target.request_uri, body=body, headers=headers, redirect=False,
                                    retries=False, preload_content=False, assert_same_host=False)
            try:
                return Reply(response.status, response.headers)
            finally:
                response.close()  # the body is not read: the status says what a webhook needs
        finally:
            pool.close()

    def _pool(self, address: str, target: SafeTarget) -> HTTPConnectionPool:
        if target.scheme == "https":
            return HTTPSConnectionPool(address, target.port, timeout=self.timeout, maxsize=1, retries=False,
                                       cert_reqs="CERT_REQUIRED", ca_certs=self.ca_certs,
                                       server_hostname=target.host, assert_hostname=target.host)
        return HTTPConnectionPool(address, target.port, timeout=self.timeout, maxsize=1, retries=False)


def _reason(error: BaseException) -> str:
    return str(getattr(error, "reason", None) or error)
