"""How large a submission's body may be, decided before a byte of it is read.

A body is read and parsed whole (JSON) or part by part (a form), so a limit
checked only after parsing still lets a 60 MiB body for a 64 KiB analyzer
cost seconds and hundreds of megabytes. The analyzer is named inside the body,
so what is known before reading is the fleet: a body may be as large as the
largest input some analyzer takes in that kind of body, allowing for how the
body encodes it (``_ENCODING_ALLOWANCE``), plus an envelope for the other
fields. ``Content-Length`` over that answers 413 at once. A chunked body is
counted as it is read and refused as soon as it passes it (werkzeug's own
``LimitedStream`` would cut it at the limit without a word, and the cut JSON
would answer 400); one within it is handed on as a body of known length. Once
the analyzer is known its own limit applies (``check_body_for``), and then the
input's exact size (api/validation.py).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from typing import Any

from flask import Request

from api.errors import BadRequest, PayloadTooLarge

__all__ = ["ENVELOPE_BYTES", "body_limit", "bound_submission_body", "check_body_for"]

#: Room beside the input for the analyzer's name, params, webhook and multipart headers.
ENVELOPE_BYTES = 64 * 1024
#: How many body bytes an input's byte may take: JSON may be indented or escaped (the input's limit
#: counts it compact), and a url-encoded form writes a byte as ``%XX``.
_ENCODING_ALLOWANCE = {"application/json": 2, "multipart/form-data": 2, "application/x-www-form-urlencoded": 3}
#: A chunked body is read in pieces of this size, and held in memory up to _SPOOL_IN_MEMORY (then on disk).
_READ_SIZE, _SPOOL_IN_MEMORY = 64 * 1024, 1024 * 1024


def body_limit(mimetype: str, input_limit: int) -> int:
    """The largest body of ``mimetype`` that can carry an input of at most ``input_limit`` bytes."""
    return _ENCODING_ALLOWANCE.get(mimetype, 0) * input_limit + ENVELOPE_BYTES


def bound_submission_body(request: Request, specs: Iterable[dict[str, Any]], server_limit: int) -> int:
    """Set ``request``'s body limit to the most any served analyzer takes in this kind of body;
    413 now if the body is over it. Returns the limit.

    Call it before anything reads ``request.content_length`` (werkzeug caches it): a chunked body
    is given its length here."""
    largest = _largest_input(request.mimetype, specs)
    # No spec known for this kind of body (none served now): only the server's limit applies, and
    # validation names what is wrong (422 unknown_analyzer), rather than a 413 no analyzer asked for.
    limit = server_limit if largest is None else min(server_limit, body_limit(request.mimetype, largest))
    request.max_content_length = limit
    chunked = _is_chunked(request.environ)
    if chunked:
        _take_chunked_body(request.environ, limit)
    length = request.content_length
    if length is not None and length > limit:
        size = "" if chunked else f" of {length} bytes"  # a chunked one was read no further than the limit
        raise PayloadTooLarge(f"request body{size} is over {limit} bytes, the most any analyzer here takes "
                              f"as {request.mimetype or 'a body'}", field="body")
    return limit


def check_body_for(request: Request, spec: dict[str, Any]) -> None:
    """413 when the body, already read, is over what the analyzer it names takes."""
    limit = body_limit(request.mimetype, spec["max_input_bytes"])
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes is over {limit}, the most {spec['name']!r} "
                              f"takes as {request.mimetype}", field="body")


def _is_chunked(environ: dict[str, Any]) -> bool:
    return bool(environ.get("wsgi.input_terminated")) and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "")


def _take_chunked_body(environ: dict[str, Any], limit: int) -> None:
    """Read a chunked body into a spool, counting, and leave the request a body of known length:
    the spool, or, once the count passes ``limit``, nothing (so that no later reader, such as the
    metrics hook, reads on). ``Content-Length`` says what was counted."""
    source, spool, length = environ["wsgi.input"], tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY), 0
    while length <= limit:
        try:
            chunk = source.read(_READ_SIZE)
        except Exception:  # noqa: BLE001 - the server's own parse errors (gunicorn's are not OSErrors)
            spool.close()
            raise BadRequest("the chunked body is malformed or was cut off", field="body") from None
        if not chunk:
            break
        length += len(chunk)
        spool.write(chunk)
    if length > limit:
        spool.close()
        spool = io.BytesIO()
    spool.seek(0)
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = spool, str(length)
    environ.pop("HTTP_TRANSFER_ENCODING", None)


def _largest_input(mimetype: str, specs: Iterable[dict[str, Any]]) -> int | None:
    """The largest input a served analyzer takes in a body of ``mimetype``; None when none takes one."""
    if mimetype == "application/json":
        # A JSON body carries a JSON input only: analyzers that take files are not counted.
        sizes = [s["max_input_bytes"] for s in specs if s.get("input_schema") is not None]
    else:
        sizes = [s["max_input_bytes"] for s in specs]  # other types are answered 415 (nothing read)
    return max(sizes, default=None)
