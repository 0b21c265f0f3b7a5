"""Parse a whole ``multipart/form-data`` body at C speed, or decline it.

werkzeug's parser is incremental and pure Python: a regex search per 64 KiB
read and per part. On a 100 KB upload it was a third to a half of the API
worker's CPU. Here the body is already in memory (the caller passes only
small ones), so the delimiters are found with ``bytes.find`` and each part is
copied once.

The parser is strict on purpose. It accepts only bodies laid out as RFC 7578
and RFC 2046 say, with CRLF line breaks, and answers ``None`` for anything
else (bare LF, no close delimiter, a header line it does not know, text that
is not UTF-8, ...), so that werkzeug reads those as it always has. What it
accepts, it reads as werkzeug does: a part whose Content-Disposition has a
``filename`` is a file, any other a text field, and the first part of a name
wins, as ``MultiDict.get`` answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header

__all__ = ["FormData", "parse_multipart"]


@dataclass(frozen=True)
class FormData:
    fields: dict[str, str]
    """Text parts by name, decoded as UTF-8."""
    files: dict[str, tuple[str, bytes]]
    """File parts by name: the filename as sent (it may be empty) and the content."""


#: RFC 2046 section 5.1.1: 1 to 70 of these characters, the last not a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_CRLF = b"\r\n"
_BLANK_LINE = b"\r\n\r\n"
#: Transport padding: what RFC 2046 lets a sender put after a delimiter, before its CRLF.
_PADDING = b" \t"
#: What browsers and HTTP clients send on a part. Anything else (Content-Transfer-Encoding,
#: a second Content-Disposition) is rare enough to leave to werkzeug.
_PART_HEADERS = frozenset({"content-disposition", "content-type"})
#: ``form-data; name="..."`` with an optional ``; filename="..."``, quoted values holding none of
#: the characters parse_options_header would unescape (backslash, ``%22``) or end on.
_PLAIN_DISPOSITION = re.compile(r'form-data; name="([^"\\%]*)"(?:; filename="([^"\\%]*)")?')


def parse_multipart(body: bytes, boundary: str, *, max_parts: int | None) -> FormData | None:
    """The fields and files of ``body``, or None where it is not plainly well-formed.

    Raises werkzeug's ``RequestEntityTooLarge`` past ``max_parts`` parts, at the part
    where werkzeug's parser would: the API answers that as it always has.
    """
    if not _BOUNDARY.fullmatch(boundary):
        return None
    dash_boundary = b"--" + boundary.encode("ascii")
    delimiter = _CRLF + dash_boundary
    # The first delimiter opens the body or its own line; werkzeug would also take one
    # in the middle of a preamble line, so such a body is left to it.
    position = body.find(dash_boundary)
    if position < 0 or (position > 0 and body[position - 2:position] != _CRLF):
        return None
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    parts = 0
    while True:
        position += len(dash_boundary)
        if body.startswith(b"--", position):  # the close delimiter
            return FormData(fields, files) if parts and _ends_delimiter_line(body, position + 2) else None
        line_end = body.find(_CRLF, position)
        if line_end < 0 or body[position:line_end].strip(_PADDING):
            return None
        headers_start = line_end + len(_CRLF)
        headers_end = body.find(_BLANK_LINE, headers_start)
        if headers_end < 0:
            return None
        part = _part_of(body[headers_start:headers_end])
        if part is None:
            return None
        parts += 1
        if max_parts is not None and parts > max_parts:
            raise RequestEntityTooLarge()
        # The search starts at the blank line's second CRLF: a part with no content may end
        # its headers right at the next delimiter, and werkzeug reads it as empty.
        content_end = body.find(delimiter, headers_end + len(_CRLF))
        if content_end < 0:
            return None
        content_start = min(headers_end + len(_BLANK_LINE), content_end)
        if _has_bare_line_break_delimiter(body, dash_boundary, content_start, content_end):
            return None
        name, filename, utf8 = part
        content = body[content_start:content_end]
        if filename is not None:
            files.setdefault(name, (filename, content))
        elif not utf8:
            return None
        else:
            try:
                fields.setdefault(name, content.decode("utf-8"))
            except UnicodeDecodeError:  # werkzeug would replace the bad bytes; let it
                return None
        position = content_end + len(_CRLF)


def _ends_delimiter_line(body: bytes, position: int) -> bool:
    """Whether only transport padding stands between ``position`` and the CRLF or the end of the body."""
    line_end = body.find(_CRLF, position)
    return not body[position:line_end if line_end >= 0 else len(body)].strip(_PADDING)


def _has_bare_line_break_delimiter(body: bytes, dash_boundary: bytes, start: int, end: int) -> bool:
    """Whether a ``--boundary`` in the content follows a lone CR or LF.

    werkzeug takes a lone CR or LF for a line break, so for it that may end the part;
    ``--boundary`` after any other byte is content to both parsers.
    """
    found = body.find(dash_boundary, start, end)
    while found >= 0:
        if body[found - 1] in _CRLF:
            return True
        found = body.find(dash_boundary, found + 1, end)
    return False


def _part_of(header_block: bytes) -> tuple[str, str | None, bool] | None:
    """A part's name, its filename (None for a text field) and whether its text is UTF-8, from its headers.

    None for headers werkzeug might read otherwise: folded or empty lines, a line without a
    colon or not UTF-8, a header other than Content-Disposition and Content-Type or one twice,
    a disposition other than form-data, or no name.
    """
    headers: dict[str, str] = {}
    for raw in header_block.split(_CRLF):
        if not raw or raw[0] in _PADDING or b"\r" in raw or b"\n" in raw:
            return None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        name, colon, value = line.partition(":")
        name = name.strip(" \t").lower()
        if not colon or name not in _PART_HEADERS or name in headers:
            return None
        headers[name] = value.strip(" \t")  # as werkzeug strips the line and the value
    name, filename = _name_and_filename(headers.get("content-disposition"))
    if name is None:
        return None
    if filename is not None:
        return name, filename, True
    # werkzeug decodes a text part in the charset its Content-Type names, when it knows it.
    charset = parse_options_header(headers.get("content-type"))[1].get("charset")
    return name, None, charset is None or charset.lower() == "utf-8"


def _name_and_filename(disposition: str | None) -> tuple[str | None, str | None]:
    """The ``name`` and ``filename`` of a form-data Content-Disposition; a None name for any other."""
    # parse_options_header took 20 us a part, most of this parser's time; what every client
    # sends reads the same with a regex (a test holds the two to the same answers).
    plain = _PLAIN_DISPOSITION.fullmatch(disposition or "")
    if plain is not None:
        return plain.group(1), plain.group(2)
    value, options = parse_options_header(disposition)
    if value.lower() != "form-data":
        return None, None
    return options.get("name"), options.get("filename")
