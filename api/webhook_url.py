"""The ``webhook`` of a submission: read from the request and checked, or a 422 naming it.

The URL is judged by ``tasks.url_safety``, the same parser and checks the
dispatcher applies when it calls, so a URL the API accepts is one the
dispatcher reads the same way (no backslashes, control characters,
whitespace or credentials; http(s) only) and an address it refuses is refused
here already. A host that does not resolve is refused too, with a code of its
own (``unresolvable_host``): the dispatcher would retry it, but a job should
not be accepted with a webhook that may never reach anyone. When DNS says
only "try again" (``EAI_AGAIN``), the answer is a ``503`` instead: the URL
may be fine.
"""

from __future__ import annotations

from flask import Request

from api.errors import ServiceUnavailable, UnprocessableEntity
from api.form import submitted_form
from tasks.settings import Settings
from tasks.url_safety import UnresolvableHost, UnsafeUrl, check_url

__all__ = ["check_webhook_url", "webhook_from_request"]


def check_webhook_url(url: object, settings: Settings) -> str:
    """``url`` if it is an unambiguous http(s) URL that reaches a public or allow-listed address.

    No server-side request forgery: a webhook may not reach loopback, private or
    link-local addresses unless GPUQ_URL_ALLOWLIST names them. The dispatcher checks
    again when it calls, since the name may resolve differently by then.
    """
    try:
        check_url(url, settings.outbound_allowlist())
    except UnsafeUrl as error:
        if isinstance(error, UnresolvableHost) and error.temporary:
            raise ServiceUnavailable(f"webhook not checked: {error} (a temporary DNS failure); try again",
                                     field="webhook") from None
        raise UnprocessableEntity(f"webhook refused: {error}", field="webhook", code=error.code) from None
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
    return check_webhook_url(url, settings)
