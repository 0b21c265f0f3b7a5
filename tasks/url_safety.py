"""Outbound URLs (webhooks, URL inputs): refused when they reach this side of the network.

A URL a tenant gives is one the system will call from inside the network, so
without a check it is a way in (SSRF): ``http://169.254.169.254/`` reads cloud
credentials, ``http://redis:6379/`` talks to Redis. ``check_url`` resolves the
host and refuses the URL when any address it resolves to is loopback,
private, link-local, multicast, reserved or otherwise not public, unless the
host or the address is allow-listed (``GPUQ_URL_ALLOWLIST``). A host that
does not resolve is refused too, with ``UnresolvableHost``: not unsafe, only
not callable now, so a caller that checks again later may try again.

One parser. Parsers disagree on odd URLs: ``http://127.0.0.1\\.x.evil.example/``
is a host ``127.0.0.1\\.x.evil.example`` to ``urllib.parse`` and the host
``127.0.0.1`` (then a path) to urllib3, so a check made with one and a call
made with the other reach different hosts. So ``parse_web_url`` first refuses
what parsers read differently (backslashes, control characters, whitespace,
credentials, non-ASCII or percent-encoding in the host part), then parses
once, with urllib3's ``parse_url``, and the parts it returns are the ones
checked *and* called (``tasks.outbound_http``): nothing parses the URL again.

Check twice. Once when the URL is accepted, to answer 422 at once; and again
at call time, connecting to one of the addresses that check returned (not to
the name again), because DNS may answer differently the second time (DNS
rebinding). Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

__all__ = ["Allowlist", "InvalidUrl", "Resolver", "SafeTarget", "UnresolvableHost", "UnsafeUrl", "WebUrl", "check_url",
           "is_public_address", "parse_web_url", "resolve_host"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Iterable[str]]

_SCHEMES = {"http": 80, "https": 443}
MAX_LENGTH = 2048

# Refused whatever ``ipaddress`` says: its ``is_global`` changed between Python patch releases (3.11.7
# calls fec0::/10 and 2002::/16 global), and some of these embed an IPv4 address that may be internal.
_NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/96",  # IPv4-compatible (::127.0.0.1), and :: and ::1
    "64:ff9b::/96", "64:ff9b:1::/48",  # NAT64: reaches the IPv4 address it embeds
    "100::/64", "2001::/23",  # discard; IETF protocol assignments, Teredo (embeds IPv4) among them
    "2001:db8::/32", "2002::/16",  # documentation; 6to4 (embeds IPv4: 2002:7f00:1:: is 127.0.0.1's)
    "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))


class UnsafeUrl(ValueError):
    """Raised when a URL is malformed, ambiguous, not http(s), or reaches an address that is not public."""

    code = "unsafe_url"


class InvalidUrl(UnsafeUrl):
    """Raised when a string is not an absolute http(s) URL with a host: a mistake rather than an attack."""

    code = "invalid_field"


class UnresolvableHost(UnsafeUrl):
    """Raised when the host has no address now; it may have one later (``temporary``: DNS said try again)."""

    code = "unresolvable_host"

    def __init__(self, message: str, *, temporary: bool = False):
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class WebUrl:
    """An http(s) URL parsed once: what is connected to and what is asked for there."""

    url: str
    scheme: str
    #: Lower case; an IPv6 literal without its brackets.
    host: str
    port: int
    #: Path and query, as sent on the request line.
    request_uri: str

    @property
    def host_header(self) -> str:
        host = _bracketed(self.host)
        return host if self.port == _SCHEMES[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """``scheme://host:port``: what a connection is made to (one webhook destination)."""
        return f"{self.scheme}://{_bracketed(self.host)}:{self.port}"


@dataclass(frozen=True)
class SafeTarget(WebUrl):
    """A checked URL and the addresses it may be connected to (and no others)."""

    addresses: tuple[str, ...] = ()


class Allowlist:
    """Hosts (exact, case-insensitive) and networks that may be reached although not public."""

    def __init__(self, hosts: Iterable[str] = (), networks: Iterable[Network] = ()):
        self.hosts = frozenset(h.lower().rstrip(".") for h in hosts)
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, spec: str) -> Allowlist:
        """``"hooks.internal, 10.0.5.0/24, 127.0.0.1"``: names, addresses and CIDRs, comma-separated."""
        hosts: list[str] = []
        networks: list[Network] = []
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
    if any(address in network for network in _NOT_PUBLIC if network.version == address.version):
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def parse_web_url(url: object) -> WebUrl:
    """``url`` parsed, if it is an unambiguous absolute http(s) URL with a host; else ``UnsafeUrl``."""
    if not isinstance(url, str) or not url or len(url) > MAX_LENGTH:
        raise InvalidUrl(f"must be a URL string of at most {MAX_LENGTH} characters")
    if "\\" in url:
        raise UnsafeUrl("a URL may not contain a backslash (parsers disagree on where its host ends)")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise UnsafeUrl("a URL may not contain whitespace or control characters")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise InvalidUrl("must be an http:// or https:// URL")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:
        raise UnsafeUrl("a URL may not carry credentials")
    if not authority.isascii():
        raise UnsafeUrl("a URL's host must be ASCII (write an international name in its xn-- form)")
    if "%" in authority:  # urllib3 decodes it, others do not; an IPv6 zone id names one machine's interface
        raise UnsafeUrl("a host may not contain '%' (no percent-encoding, no IPv6 zone id)")
    try:
        parts = parse_url(url)
    except LocationParseError as error:
        raise InvalidUrl(f"not a valid URL: {error}") from None
    host = (parts.host or "").strip("[]")
    if not host:
        raise InvalidUrl("must name a host")
    port = parts.port if parts.port is not None else _SCHEMES[parts.scheme]
    if not 0 < port < 65536:
        raise InvalidUrl(f"port {port} is out of range")
    return WebUrl(url=url, scheme=parts.scheme, host=host, port=port, request_uri=parts.request_uri)


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host``; ``UnresolvableHost`` when it gives none now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UnresolvableHost(f"host {host!r} does not resolve: {error.strerror or error}",
                               temporary=error.errno == socket.EAI_AGAIN) from None
    except UnicodeError as error:  # a label the IDNA codec cannot encode: no lookup could ever succeed
        raise InvalidUrl(f"host {host!r} is not a valid name: {error}") from None
    return [info[4][0] for info in infos]


def check_url(url: str, allowlist: Allowlist | None = None, resolve: Resolver = resolve_host) -> SafeTarget:
    """The parsed URL and its addresses if every one is public or allow-listed; else ``UnsafeUrl``."""
    allowlist = allowlist or Allowlist()
    web = parse_web_url(url)
    literal = _literal(web.host)
    addresses = [web.host] if literal is not None else list(dict.fromkeys(resolve(web.host, web.port)))
    if not addresses:
        raise UnresolvableHost(f"host {web.host!r} has no address")
    if not allowlist.allows_host(web.host):
        for raw in addresses:
            address = ipaddress.ip_address(raw.split("%", 1)[0])  # drop an IPv6 zone id
            if not is_public_address(address) and not allowlist.allows_address(address):
                raise UnsafeUrl(f"{web.host!r} resolves to {address}, which is not a public address "
                                f"(allow-list it in GPUQ_URL_ALLOWLIST if it is meant to be called)")
    return SafeTarget(**vars(web), addresses=tuple(addresses))


def _bracketed(host: str) -> str:
    """An IPv6 literal as a URL and a Host header write it: in brackets."""
    return f"[{host}]" if ":" in host else host


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
