"""Outbound URLs (webhooks, URL inputs): refused when they reach this side of the network.

A URL a tenant gives is one the system will call from inside the network, so
without a check it is a way in (SSRF): ``http://169.254.169.254/`` reads cloud
credentials, ``http://redis:6379/`` talks to Redis. ``check_url`` resolves the
host and refuses the URL when any address it resolves to is loopback,
private, link-local, multicast, reserved or otherwise not public, unless the
host or the address is allow-listed (``GPUQ_URL_ALLOWLIST``).

Check twice. Once when the URL is accepted, to answer 422 at once; and again
at call time, connecting to one of the addresses that check returned (not to
the name again), because DNS may answer differently the second time (DNS
rebinding). ``check_url`` returns those addresses for that purpose. Do not
follow redirects without checking each target the same way.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Allowlist", "SafeTarget", "UnsafeUrl", "check_url", "is_public_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]

_SCHEMES = {"http": 80, "https": 443}


class UnsafeUrl(ValueError):
    """Raised when a URL is malformed, not http(s), or reaches an address that is not public."""


@dataclass(frozen=True)
class SafeTarget:
    """A checked URL and the addresses it may be connected to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


class Allowlist:
    """Hosts (exact, case-insensitive) and networks that may be reached although not public."""

    def __init__(self, hosts: Iterable[str] = (), networks: Iterable[ipaddress._BaseNetwork] = ()):
        self.hosts = frozenset(h.lower().rstrip(".") for h in hosts)
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, spec: str) -> Allowlist:
        """``"hooks.internal, 10.0.5.0/24, 127.0.0.1"``: names, addresses and CIDRs, comma-separated."""
        hosts, networks = [], []
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not all(part and len(part) <= 63 for part in entry.split(".")) or " " in entry:
                    raise ValueError(f"GPUQ_URL_ALLOWLIST entry {entry!r} is neither a host nor a CIDR") from None
                hosts.append(entry)
        return cls(hosts, networks)

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: Address) -> bool:
        return any(address in network for network in self.networks if network.version == address.version)


def is_public_address(address: Address) -> bool:
    """True for an address on the public internet (not loopback, private, link-local, reserved, ...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public_address(address.ipv4_mapped)  # ::ffff:127.0.0.1 is loopback
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnsafeUrl(f"host {host!r} does not resolve: {error}") from None
    return [info[4][0] for info in infos]


def check_url(url: str, allowlist: Allowlist | None = None, resolve: Resolver = _resolve) -> SafeTarget:
    """The URL and its addresses if every one is public or allow-listed; else ``UnsafeUrl``."""
    allowlist = allowlist or Allowlist()
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeUrl("a URL must be a string of at most 2048 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise UnsafeUrl(f"not a valid URL: {error}") from None
    if parts.scheme not in _SCHEMES:
        raise UnsafeUrl("only http and https URLs may be called")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("a URL may not carry credentials")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    port = port or _SCHEMES[parts.scheme]
    literal = _literal(host)
    addresses = [host] if literal is not None else list(dict.fromkeys(resolve(host, port)))
    if not addresses:
        raise UnsafeUrl(f"host {host!r} has no address")
    if not allowlist.allows_host(host):
        for raw in addresses:
            address = ipaddress.ip_address(raw.split("%", 1)[0])  # drop an IPv6 zone id
            if not is_public_address(address) and not allowlist.allows_address(address):
                raise UnsafeUrl(f"{host!r} resolves to {address}, which is not a public address "
                                f"(allow-list it in GPUQ_URL_ALLOWLIST if it is meant to be called)")
    return SafeTarget(url=url, scheme=parts.scheme, host=host, port=port, addresses=tuple(addresses))


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
