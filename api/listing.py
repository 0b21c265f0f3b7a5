"""``GET /v1/jobs``: the caller's own jobs, newest first, a page at a time."""

from __future__ import annotations

from flask import Blueprint, request

from api.auth import current_tenant
from api.errors import BadRequest
from api.render import job_object
from api.services import services
from tasks.jobs import CANCELED, CANCELING, FAILED, QUEUED, RUNNING, SUCCEEDED
from tasks.tenants import decode_cursor, list_jobs

__all__ = ["listing", "STATUSES"]

listing = Blueprint("listing", __name__)

STATUSES = (QUEUED, RUNNING, CANCELING, SUCCEEDED, FAILED, CANCELED)
_DEFAULT_LIMIT, _MAX_LIMIT = 20, 100


@listing.get("/v1/jobs")
def list_own_jobs():
    svc = services()
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}", field="status")
    limit = _limit(request.args.get("limit"))
    cursor = request.args.get("cursor")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError:
            raise BadRequest("cursor is not one this API gave out", field="cursor") from None
    page = list_jobs(svc.redis, current_tenant(), limit=limit, status=status, cursor=cursor)
    # Results are not inlined: a page of large results would be a large answer; GET the job for its result.
    return {"jobs": [job_object(record) for record in page.jobs], "next_cursor": page.next_cursor}


def _limit(raw: str | None) -> int:
    if raw is None:
        return _DEFAULT_LIMIT
    # isdecimal(), not isdigit(): "²" is a digit that int() refuses. ASCII only: int() takes "١٢" too.
    if not (raw.isascii() and raw.isdecimal()) or not 1 <= int(raw) <= _MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {_MAX_LIMIT}", field="limit")
    return int(raw)
