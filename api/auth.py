"""API keys: every ``/v1`` request names its tenant with ``Authorization: Bearer <key>``.

Keys come from ``GPUQ_API_KEYS`` as ``tenant:sha256hex`` entries, so the
configuration holds no usable secret: a leaked environment or ``ps`` output
gives hashes, not keys. ``python -m api.keygen TENANT`` makes a key and its entry.
Auth is on unless ``GPUQ_AUTH=off`` says otherwise, and the API refuses to
start with neither keys nor that switch, so a forgotten variable never serves
an open API by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass

from flask import Flask, g, request

from api.errors import Unauthorized
from tasks.settings import Settings, SettingsError

__all__ = ["ANONYMOUS_TENANT", "OPEN_PATHS", "ApiKeys", "current_tenant", "hash_key", "install_auth", "new_key"]

log = logging.getLogger(__name__)

#: The one tenant of an API running with ``GPUQ_AUTH=off``.
ANONYMOUS_TENANT = "default"
#: Probes and scrapes that operators' tools call without a key (see the README for what they show).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})

# Tenant names go into Redis key names and logs: keep them plain.
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def hash_key(key: str) -> str:
    """The SHA-256 (hex) of a key, as ``GPUQ_API_KEYS`` holds it (what ``sha256sum`` prints)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(tenant: str) -> tuple[str, str]:
    """(a fresh random key, its ``tenant:sha256`` entry for ``GPUQ_API_KEYS``)."""
    if not _TENANT.match(tenant):
        raise ValueError(f"tenant name {tenant!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
    key = "gpuq_" + secrets.token_urlsafe(32)
    return key, f"{tenant}:{hash_key(key)}"


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys: (tenant, SHA-256 digest) pairs; a tenant may have several (rotation)."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        entries = []
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            tenant, _, digest = entry.partition(":")
            if not _TENANT.match(tenant) or not _SHA256_HEX.match(digest):
                raise SettingsError(f"GPUQ_API_KEYS entry {entry[:80]!r} is not tenant:sha256hex "
                                    f"(make one with `python -m api.keygen TENANT`)")
            entries.append((tenant, bytes.fromhex(digest)))
        return cls(tuple(entries))

    def tenant_for(self, key: str) -> str | None:
        """The tenant whose key this is, or None.

        The key is hashed first and every entry compared with
        ``hmac.compare_digest``, without stopping at a match, so the time taken
        says nothing about how much of a guess was right or which entry matched.
        """
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for tenant, expected in self.entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = tenant
        return found


def current_tenant() -> str:
    """The tenant of the request being served."""
    return g.get("gpuq_tenant", ANONYMOUS_TENANT)


def install_auth(app: Flask, settings: Settings) -> None:
    """Check the key of every request outside ``OPEN_PATHS``; fail at start-up on a bad configuration."""
    if settings.auth_off:
        if settings.api_keys.strip():
            raise SettingsError("GPUQ_AUTH=off and GPUQ_API_KEYS are both set: choose one")
        log.warning("GPUQ_AUTH=off: the API serves anyone who can reach it, as tenant %r "
                    "(local development only)", ANONYMOUS_TENANT)
        return
    if settings.auth.strip().lower() not in ("", "on"):
        raise SettingsError(f"GPUQ_AUTH={settings.auth!r}: leave it unset (keys required) or set it to off")
    keys = ApiKeys.parse(settings.api_keys)
    if not keys.entries:
        raise SettingsError("no API keys: set GPUQ_API_KEYS=tenant:sha256hex[,...] (make one with "
                            "`python -m api.keygen TENANT`), or GPUQ_AUTH=off for local development")

    @app.before_request
    def _authenticate():
        if request.path in OPEN_PATHS:
            return None
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("send an API key: Authorization: Bearer <key>")
        tenant = keys.tenant_for(key.strip())
        if tenant is None:
            raise Unauthorized("the API key is not valid")
        g.gpuq_tenant = tenant
        return None

