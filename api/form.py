"""The fields and the file of a submitted form, read once per request.

A ``multipart/form-data`` body goes to the fast parser (``api.multipart``)
first. werkzeug's parser reads it only where that one declines, so an odd
body fares exactly as before: werkzeug accepts it, or answers it as empty,
or refuses it with the 413 the API has always given. The submission
(``api.validation``), its webhook and the count of refused submissions
(``api.metrics``) all read the form from here, so a body is parsed once.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from flask import Request

from api.multipart import parse_multipart

__all__ = ["SubmittedForm", "Upload", "form_read_so_far", "submitted_form"]

#: Where the form of a request is kept: the WSGI environ holds what belongs to one request.
_ENVIRON_KEY = "gpuq.submitted_form"


@dataclass(frozen=True)
class Upload:
    filename: str
    """As the client sent it; empty where a browser's file input was left empty."""
    stream: IO[bytes]


@dataclass(frozen=True)
class SubmittedForm:
    fields: Mapping[str, str]
    upload: Upload | None
    """The first part named ``file`` that has a filename parameter."""
    names: frozenset[str] = frozenset()
    """Every part's name, fields and files alike."""


def submitted_form(request: Request) -> SubmittedForm:
    """The form of ``request``: empty where its body is not a form, as werkzeug answers."""
    form = form_read_so_far(request)
    if form is None:
        form = _fast_multipart(request) or _werkzeug_form(request)
        request.environ[_ENVIRON_KEY] = form
    return form


def form_read_so_far(request: Request) -> SubmittedForm | None:
    """The form of ``request`` if something has read it already, else None; it reads nothing."""
    return request.environ.get(_ENVIRON_KEY)


def _fast_multipart(request: Request) -> SubmittedForm | None:
    if request.mimetype != "multipart/form-data":
        return None
    boundary = request.mimetype_params.get("boundary")
    length, memory_limit = request.content_length, request.max_form_memory_size
    # Only a body within werkzeug's in-memory form limit is read whole: over it, werkzeug
    # refuses long text parts and spools files to disk, and it keeps doing so. A body of
    # unknown length (chunked) stays with werkzeug as well.
    if not boundary or length is None or (memory_limit is not None and length > memory_limit):
        return None
    body = request.get_data(cache=True, parse_form_data=False)  # werkzeug parses this copy if we decline
    parsed = parse_multipart(body, boundary, max_parts=request.max_form_parts)
    if parsed is None:
        return None
    file = parsed.files.get("file")
    # BytesIO shares the bytes it is given: reading them back copies nothing.
    upload = None if file is None else Upload(file[0], io.BytesIO(file[1]))
    return SubmittedForm(parsed.fields, upload, frozenset(parsed.fields) | frozenset(parsed.files))


def _werkzeug_form(request: Request) -> SubmittedForm:
    file = request.files.get("file")
    upload = None if file is None else Upload(file.filename or "", file.stream)
    return SubmittedForm(request.form, upload, frozenset(request.form) | frozenset(request.files))
