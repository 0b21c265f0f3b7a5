"""The ``webhook`` of a submission: read from the request and checked, or a 422 naming it.

``check_webhook_url`` is the one place a webhook URL is judged; an allow-list
or SSRF filter (refusing private addresses) belongs there too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Request

from api.errors import UnprocessableEntity
from api.form import submitted_form
from tasks.settings import Settings
from tasks.url_safety import UnsafeUrl, check_url

__all__ = ["check_webhook_url", "webhook_from_request"]

_MAX_LENGTH = 2048


def check_webhook_url(url: object) -> str:
    """``url`` if it is an absolute http(s) URL with a host, else ``UnprocessableEntity``."""
    if not isinstance(url, str) or not url:
        raise UnprocessableEntity("webhook must be a URL string", field="webhook")
    if len(url) > _MAX_LENGTH or not url.isprintable() or any(c.isspace() for c in url):
        raise UnprocessableEntity(f"webhook must be a URL of at most {_MAX_LENGTH} printable characters "
                                  "without spaces", field="webhook")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as error:
        raise UnprocessableEntity(f"webhook is not a valid URL: {error}", field="webhook") from None
    if parts.scheme not in ("http", "https"):
        raise UnprocessableEntity("webhook must be an http:// or https:// URL", field="webhook")
    if not parts.hostname:
        raise UnprocessableEntity("webhook must name a host", field="webhook")
    return url


def webhook_from_request(request: Request, settings: Settings) -> str | None:
    """The checked webhook of a POST /v1/jobs (form field or JSON member), None when absent."""
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        url = body.get("webhook") if isinstance(body, dict) else None
    else:
        url = submitted_form(request).fields.get("webhook")
    if url is None or url == "":
        return None
    if not settings.webhook_secret:
        raise UnprocessableEntity("this server sends no webhooks: GPUQ_WEBHOOK_SECRET is not set",
                                  field="webhook", code="webhooks_disabled")
    url = check_webhook_url(url)
    # No server-side request forgery: a webhook may not reach loopback, private or
    # link-local addresses unless GPUQ_URL_ALLOWLIST names them. The dispatcher checks again
    # when it calls, since the name may resolve differently by then.
    try:
        check_url(url, settings.outbound_allowlist())
    except UnsafeUrl as error:
        raise UnprocessableEntity(f"webhook refused: {error}", field="webhook", code="unsafe_url") from None
    return url
