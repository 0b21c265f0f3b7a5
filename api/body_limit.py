"""How large a submission's body may be, decided before a byte of it is read.

A body is read and parsed whole (JSON) or part by part (a form), so a limit
checked only after parsing still lets a 60 MiB body for a 64 KiB analyzer
cost seconds and hundreds of megabytes. The analyzer is named inside the body,
so what is known before reading is the fleet: a body may be as large as the
largest input some analyzer takes in that kind of body, plus an envelope for
the other fields. ``Content-Length`` over that answers 413 at once; a chunked
body is counted as it is read and refused as soon as it passes it (werkzeug's
own ``LimitedStream`` would cut it at the limit without a word, and the cut
JSON would answer 400). Once the analyzer is known its own limit applies
(``check_body_for``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import Any

from flask import Request

from api.errors import BadRequest, PayloadTooLarge

__all__ = ["ENVELOPE_BYTES", "bound_submission_body", "check_body_for"]

#: Room beside the input for the analyzer's name, params, webhook, multipart headers and a
#: JSON body's own formatting.
ENVELOPE_BYTES = 64 * 1024

#: A chunked body is read in pieces of this size, and held in memory up to _SPOOL_IN_MEMORY (then on disk).
_READ_SIZE, _SPOOL_IN_MEMORY = 64 * 1024, 1024 * 1024
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def bound_submission_body(request: Request, specs: Iterable[dict[str, Any]], server_limit: int) -> int:
    """Set ``request``'s body limit to the most any served analyzer takes in this kind of body;
    413 now if its ``Content-Length`` is over it. Returns the limit."""
    limit = min(server_limit, _largest_input(request.mimetype, specs) + ENVELOPE_BYTES)
    request.max_content_length = limit
    length = request.content_length
    if length is None and request.environ.get("wsgi.input_terminated"):
        length = _take_chunked_body(request, limit)
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over {limit}, the most any analyzer here "
                              f"takes in a {request.mimetype or 'body'} (its input limit plus "
                              f"{ENVELOPE_BYTES // 1024} KiB)", field="body")
    return limit


def check_body_for(request: Request, spec: dict[str, Any]) -> None:
    """413 when the body, already read, is over what the analyzer it names takes."""
    limit = spec["max_input_bytes"] + ENVELOPE_BYTES
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over {limit}, the most {spec['name']!r} "
                              f"takes (its input limit plus {ENVELOPE_BYTES // 1024} KiB)", field="body")


def _take_chunked_body(request: Request, limit: int) -> int:
    """Read a body of unknown length (chunked) into a spool, counting; its length, or one past
    ``limit`` as soon as it is over, having kept no more than that. Readers of the request then read
    the spool."""
    source, spool, length = request.environ["wsgi.input"], tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY), 0
    while True:
        try:
            chunk = source.read(_READ_SIZE)
        except Exception:  # noqa: BLE001 - the server's own parse errors (gunicorn's are not OSErrors)
            spool.close()
            raise BadRequest("the chunked body is malformed or was cut off", field="body") from None
        if not chunk:
            break
        length += len(chunk)
        if length > limit:
            spool.close()
            return length
        spool.write(chunk)
    spool.seek(0)
    request.environ["wsgi.input"] = spool
    return length


def _largest_input(mimetype: str, specs: Iterable[dict[str, Any]]) -> int:
    if mimetype == "application/json":
        # A JSON body carries a JSON input only: analyzers that take files are not counted.
        sizes = [s["max_input_bytes"] for s in specs if s.get("input_schema") is not None]
    elif mimetype in _FORMS:
        sizes = [s["max_input_bytes"] for s in specs]
    else:
        sizes = []  # answered 415 once read; nothing to read for that
    return max(sizes, default=0)
