"""The fast multipart parser reads a well-formed body as werkzeug does, and declines anything else.

Unit tests of ``api.multipart`` on hand-written bodies; a property test that,
on generated well-formed bodies, its fields and files are werkzeug's; and
tests that ``parse_submission`` falls back to werkzeug where it declines.
"""

from __future__ import annotations

import io
import re

import pytest
from flask import Flask
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from api.errors import UnprocessableEntity
from api.form import form_read_so_far, submitted_form
from api.multipart import FormData, _name_and_filename, parse_multipart
from api.validation import parse_submission
from tasks.media import MEDIA_SIGNATURES

B = "b0undary"
PNG = MEDIA_SIGNATURES["image/png"][0] + bytes(range(256)) * 4
SPECS = {"images": {"name": "images", "media_types": ["image/png"], "input_schema": None,
                    "params_schema": {"type": "object"}, "max_input_bytes": 1 << 20}}


def part(disposition: str, content: bytes, *extra_headers: str) -> bytes:
    headers = [f"Content-Disposition: {disposition}", *extra_headers]
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + content


def field(name: str, value: bytes, *extra_headers: str) -> bytes:
    return part(f'form-data; name="{name}"', value, *extra_headers)


def file(name: str, filename: str, content: bytes, content_type: str = "application/octet-stream") -> bytes:
    return part(f'form-data; name="{name}"; filename="{filename}"', content, f"Content-Type: {content_type}")


def body(*parts: bytes, boundary: str = B, preamble: bytes = b"", epilogue: bytes = b"\r\n") -> bytes:
    """Parts joined by delimiters as RFC 2046 lays them out."""
    delimiter = b"--" + boundary.encode()
    opening = preamble + b"\r\n" + delimiter if preamble else delimiter
    return opening + b"".join(b"\r\n" + each + b"\r\n" + delimiter for each in parts) + b"--" + epilogue


def werkzeug_reads(data: bytes, boundary: str = B) -> FormData:
    """What werkzeug's own parser makes of ``data``, first value of each name."""
    request = Request(EnvironBuilder(method="POST", input_stream=io.BytesIO(data), content_length=len(data),
                                     content_type=f'multipart/form-data; boundary="{boundary}"').get_environ())
    return FormData({name: request.form[name] for name in request.form},
                    {name: (f.filename, f.read()) for name, f in request.files.items()})


def parse(data: bytes, boundary: str = B) -> FormData | None:
    return parse_multipart(data, boundary, max_parts=1000)


# --- what it reads -----------------------------------------------------------------------------------

def test_a_simple_form():
    data = body(field("analyzer", b"images"))
    assert parse(data) == FormData({"analyzer": "images"}, {}) == werkzeug_reads(data)


def test_several_fields_and_a_file():
    data = body(field("analyzer", b"images"), field("params", b'{"n": 1}'), file("file", "a.png", PNG),
                field("note", "naïve ☃".encode(), "Content-Type: text/plain; charset=UTF-8"))
    expected = FormData({"analyzer": "images", "params": '{"n": 1}', "note": "naïve ☃"}, {"file": ("a.png", PNG)})
    assert parse(data) == expected == werkzeug_reads(data)


def test_quoted_names_with_semicolons_and_escaped_quotes():
    data = body(field('a;b=\\"c\\"', b"1"), file('f\\\\; x', 'my \\"pic\\"; 1.png', b"xy"))
    assert parse(data) == FormData({'a;b="c"': "1"}, {"f\\; x": ('my "pic"; 1.png', b"xy")}) == werkzeug_reads(data)


def test_an_rfc_2231_filename():
    data = body(part("form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve%20pic.png", b"content"))
    assert parse(data) == FormData({}, {"file": ("naïve pic.png", b"content")}) == werkzeug_reads(data)


def test_an_empty_file_input_is_a_file_with_an_empty_name():
    data = body(field("analyzer", b"images"), file("file", "", b""))
    assert parse(data) == FormData({"analyzer": "images"}, {"file": ("", b"")}) == werkzeug_reads(data)


def test_a_part_without_content_may_end_its_headers_at_the_next_delimiter():
    # How werkzeug's own test client writes an empty value: no CRLF for the absent content.
    data = body(b'Content-Disposition: form-data; name="empty"\r\n', field("next", b"x"))
    assert b'name="empty"\r\n\r\n--' in data
    assert parse(data) == FormData({"empty": "", "next": "x"}, {}) == werkzeug_reads(data)


def test_a_preamble_and_an_epilogue_are_ignored():
    data = body(field("a", b"1"), preamble=b"This is a preamble.\r\n--b0undar", epilogue=b"\r\nan epilogue --b0undary")
    assert parse(data) == FormData({"a": "1"}, {}) == werkzeug_reads(data)


def test_transport_padding_after_a_delimiter():
    data = body(field("a", b"1"), field("b", b"2")).replace(b"--b0undary\r\n", b"--b0undary \t \r\n")
    data = data.replace(b"--b0undary--", b"--b0undary-- \t")
    assert data.count(b"--b0undary \t \r\n") == 2 and data.endswith(b"--b0undary-- \t\r\n")
    assert parse(data) == FormData({"a": "1", "b": "2"}, {}) == werkzeug_reads(data)


def test_the_first_part_of_a_name_wins():
    data = body(field("a", b"first"), file("f", "1.png", b"one"), field("a", b"second"), file("f", "2.png", b"two"))
    assert parse(data) == FormData({"a": "first"}, {"f": ("1.png", b"one")}) == werkzeug_reads(data)


def test_a_boundary_in_the_content_that_does_not_open_a_line_is_content():
    content = b"x--b0undary\r\nx--b0undary--\r\n \t--b0undary\r\n\x00--b0undary"
    data = body(file("file", "a.bin", content))
    assert parse(data) == FormData({}, {"file": ("a.bin", content)}) == werkzeug_reads(data)


def test_binary_content_with_cr_and_lf_bytes():
    content = b"\r\n\r\n\n\r\r-\r\n-\n--" + bytes(range(256)) + b"\r"
    data = body(file("file", "a.bin", content), field("a", b"\r\n"))
    assert parse(data) == FormData({"a": "\r\n"}, {"file": ("a.bin", content)}) == werkzeug_reads(data)


def test_an_upload_over_werkzeugs_read_size_is_read_whole():
    content = PNG * 100  # 100 KiB and more: werkzeug reads it in 64 KiB pieces
    data = body(field("analyzer", b"images"), file("file", "a.png", content))
    assert parse(data) == FormData({"analyzer": "images"}, {"file": ("a.png", content)}) == werkzeug_reads(data)


def test_a_close_delimiter_across_werkzeugs_64_kib_reads_loses_no_byte():
    # werkzeug 3.1 ends the content with a stray CR when one of its 64 KiB reads ends between
    # the two dashes of the close delimiter; the whole body in hand, this parser does not.
    head = body(file("file", "a.bin", b"")).split(b"\r\n--b0undary--")[0]
    content = b"A" * (64 * 1024 - len(head) - len(b"\r\n--b0undary-"))
    data = head + content + b"\r\n--b0undary--\r\n"
    assert parse(data) == FormData({}, {"file": ("a.bin", content)})
    assert werkzeug_reads(data).files["file"][1] in (content, content + b"\r")


def test_more_parts_than_allowed_are_refused_as_werkzeug_refuses_them():
    data = body(*(field(f"f{i}", b"x") for i in range(4)))
    assert parse_multipart(data, B, max_parts=4) is not None
    with pytest.raises(RequestEntityTooLarge):
        parse_multipart(data, B, max_parts=3)


# --- what it leaves to werkzeug ----------------------------------------------------------------------

GOOD = body(field("analyzer", b"images"), file("file", "a.png", PNG))


@pytest.mark.parametrize("data, boundary", [
    pytest.param(GOOD.replace(b"\r\n", b"\n"), B, id="bare-LF-line-breaks"),
    pytest.param(GOOD.replace(b"\r\n\r\n", b"\n\n", 1), B, id="a-bare-LF-blank-line-after-the-headers"),
    pytest.param(GOOD.rsplit(b"--b0undary--", 1)[0], B, id="no-close-delimiter"),
    pytest.param(GOOD.rsplit(b"\r\n--b0undary--", 1)[0], B, id="cut-short-in-the-content"),
    pytest.param(GOOD[:40], B, id="cut-short-in-the-headers"),
    pytest.param(b"--b0undary--\r\n", B, id="no-part-at-all"),
    pytest.param(b"", B, id="no-body"),
    pytest.param(GOOD, "no such boundary", id="another-boundary"),
    pytest.param(GOOD.replace(b"b0undary", b"b0undary "), "b0undary ", id="a-boundary-ending-in-a-space"),
    pytest.param(GOOD.replace(b"b0undary", b"x" * 71), "x" * 71, id="a-boundary-over-70-characters"),
    pytest.param(GOOD.replace(b"b0undary", "bøundary".encode()), "bøundary", id="a-boundary-of-other-characters"),
    pytest.param(b"preamble--b0undary\r\n" + GOOD.split(b"\r\n", 1)[1], B, id="a-first-delimiter-mid-line"),
    pytest.param(b"\n" + GOOD, B, id="a-first-delimiter-after-a-lone-LF"),
    pytest.param(GOOD.replace(b"--b0undary\r\n", b"--b0undaryx\r\n", 1), B, id="junk-after-a-delimiter"),
    pytest.param(GOOD.replace(b"--b0undary--", b"--b0undary--x"), B, id="junk-after-the-close-delimiter"),
    pytest.param(GOOD.replace(b"--b0undary--", b"--b0undary--\n"), B, id="a-lone-LF-after-the-close-delimiter"),
    pytest.param(GOOD.replace(b"--b0undary\r\n", b"--b0undary \n\r\n", 1), B, id="a-lone-LF-in-the-padding"),
    pytest.param(body(file("file", "a.bin", b"x\n--b0undary\r\nmore")), B, id="lone-LF-delimiter-in-content"),
    pytest.param(body(file("file", "a.bin", b"x\r--b0undary--")), B, id="lone-CR-delimiter-in-content"),
    pytest.param(body(field("a", b"\xff\xfe")), B, id="a-text-field-that-is-not-UTF-8"),
    pytest.param(body(field("a", "é".encode("latin-1"), "Content-Type: text/plain; charset=iso-8859-1")), B,
                 id="a-text-field-in-latin-1"),
    pytest.param(body(field("a", b"1", "Content-Type: text/plain; charset=us-ascii")), B, id="a-text-field-in-ASCII"),
    pytest.param(body(field("a", b"MQ==", "Content-Transfer-Encoding: base64")), B, id="a-transfer-encoding"),
    pytest.param(body(field("a", b"1", "Content-Length: 1")), B, id="another-header"),
    pytest.param(body(field("a", b"1", 'Content-Disposition: form-data; name="b"')), B, id="a-header-twice"),
    pytest.param(body(b'Content-Disposition: form-data; name="a";\r\n filename="folded"\r\n\r\nx'), B,
                 id="a-folded-header"),
    pytest.param(body(b"Content-Disposition form-data\r\n\r\nx"), B, id="a-header-line-without-a-colon"),
    pytest.param(body('Content-Disposition: form-data; name="ä"'.encode("latin-1") + b"\r\n\r\nx"), B,
                 id="a-header-that-is-not-UTF-8"),
    pytest.param(body(b"Content-Disposition: form-data\r\n\r\nx"), B, id="no-name"),
    pytest.param(body(b'Content-Disposition: attachment; name="a"\r\n\r\nx'), B, id="not-form-data"),
    pytest.param(body(b"\r\nx"), B, id="no-headers"),
    pytest.param(body(b"Content-Type: text/plain\r\n\r\nx"), B, id="no-Content-Disposition"),
])
def test_anything_not_plainly_well_formed_is_left_to_werkzeug(data, boundary):
    assert parse(data, boundary) is None


# --- the same answers as werkzeug --------------------------------------------------------------------

#: RFC 2046's boundary characters; the last may not be a space.
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
boundaries = st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
#: What fits in a quoted header parameter: no control characters (no CR, LF), and often what
#: parse_options_header reads specially (escapes, ``%22``, separators, RFC 2231 marks).
header_text = st.lists(st.characters(blacklist_categories=("Cc", "Cs"))
                       | st.sampled_from(['"', "\\", "%22", "%", ";", "=", " ", "*", "'", "name=", "filename*="]),
                       max_size=12).map("".join)


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rfc_2231(text: str) -> str:
    return "UTF-8''" + "".join(c if c.isascii() and c.isalnum() else "".join(f"%{b:02X}" for b in c.encode())
                               for c in text)


@st.composite
def generated_parts(draw) -> bytes:
    name = draw(header_text)
    disposition = f"form-data; name={quoted(name)}"
    headers = []
    if draw(st.booleans()):  # a file
        filename = draw(header_text)
        disposition += f"; filename*={rfc_2231(filename)}" if draw(st.booleans()) else f"; filename={quoted(filename)}"
        headers.append(f"Content-Type: {draw(st.sampled_from(['application/octet-stream', 'image/png']))}")
        content = draw(st.binary(max_size=300))
    else:
        if draw(st.booleans()):
            headers.append(draw(st.sampled_from(["Content-Type: text/plain",
                                                 "Content-Type: text/plain; charset=UTF-8"])))
        content = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)).encode()
    headers = [f"Content-Disposition: {disposition}", *draw(st.permutations(headers))]
    head = "\r\n".join(headers).encode() + b"\r\n"
    # An absent content is written either way: with its empty line, or (werkzeug's own way) without.
    return head if not content and draw(st.booleans()) else head + b"\r\n" + content


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(boundary=boundaries, parts=st.lists(generated_parts(), min_size=1, max_size=6),
       preamble=st.sampled_from([b"", b"\r\n", b"preamble text\r\n"]),
       epilogue=st.sampled_from([b"", b"\r\n", b"\r\nend"]), padding=st.sampled_from([b"", b" ", b"\t \t"]))
def test_well_formed_bodies_read_as_werkzeug_reads_them(boundary, parts, preamble, epilogue, padding):
    dash_boundary = b"--" + boundary.encode()
    for each in parts:  # RFC 2046: a delimiter may not stand at the start of a line in a part
        assume(not re.search(rb"(^|[\r\n])" + re.escape(dash_boundary), each.split(b"\r\n\r\n", 1)[-1]))
    data = (preamble + dash_boundary + padding
            + b"".join(b"\r\n" + each + b"\r\n" + dash_boundary + padding for each in parts)[:-len(padding) or None]
            + b"--" + padding + epilogue)
    parsed = parse(data, boundary)
    assert parsed is not None
    assert parsed == werkzeug_reads(data, boundary)


@settings(max_examples=500, deadline=None)
@given(disposition=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=60)
       | st.builds(lambda n, f: f"form-data; name={quoted(n)}" + ("" if f is None else f"; filename={quoted(f)}"),
                   header_text, st.none() | header_text))
def test_the_plain_disposition_shortcut_reads_as_parse_options_header(disposition):
    value, options = parse_options_header(disposition)
    expected = (options.get("name"), options.get("filename")) if value.lower() == "form-data" else (None, None)
    assert _name_and_filename(disposition) == expected


# --- parse_submission: the fast path, and werkzeug where it declines ----------------------------------

APP = Flask("multipart")


def submission_of(data: bytes):
    with APP.test_request_context("/v1/jobs", method="POST", data=data,
                                  content_type=f"multipart/form-data; boundary={B}") as ctx:
        try:
            outcome = parse_submission(ctx.request, SPECS.get, lambda: sorted(SPECS))
        except UnprocessableEntity as error:
            outcome = error
        return outcome, "form" in ctx.request.__dict__  # werkzeug keeps its parse there


def test_a_well_formed_upload_is_read_without_werkzeugs_parser():
    outcome, werkzeug_parsed = submission_of(GOOD)
    assert outcome.analyzer == "images" and outcome.input_bytes == PNG and outcome.input_media_type == "image/png"
    assert not werkzeug_parsed


def test_a_bare_lf_body_is_read_by_werkzeug_from_the_body_already_read():
    data = (b'--b0undary\nContent-Disposition: form-data; name="analyzer"\n\nimages\n'
            b'--b0undary\nContent-Disposition: form-data; name="file"; filename="a.png"\n\n' + PNG
            + b"\n--b0undary--\n")
    assert parse(data) is None
    werkzeug_form = werkzeug_reads(data)
    assert werkzeug_form.fields == {"analyzer": "images"} and werkzeug_form.files["file"][0] == "a.png"
    outcome, werkzeug_parsed = submission_of(data)
    assert werkzeug_parsed
    assert (outcome.analyzer, outcome.input_bytes) == ("images", werkzeug_form.files["file"][1]) == ("images", PNG)


def test_a_body_werkzeug_cannot_read_either_is_answered_as_before():
    # werkzeug reads a body cut short as an empty form: so no analyzer.
    data = GOOD.rsplit(b"--b0undary--", 1)[0]
    assert werkzeug_reads(data) == FormData({}, {})
    outcome, werkzeug_parsed = submission_of(data)
    assert werkzeug_parsed and outcome.field == "analyzer" and outcome.code == "missing_field"


def test_an_empty_filename_means_no_file_on_either_path():
    data = body(field("analyzer", b"images"), file("file", "", b""))
    for sent in (data, data.replace(b"\r\n", b"\n")):
        outcome, _ = submission_of(sent)
        assert outcome.field == "file" and outcome.code == "missing_field"


def test_a_body_over_the_form_memory_limit_stays_with_werkzeug():
    app = Flask("small_forms")
    app.config["MAX_FORM_MEMORY_SIZE"] = len(GOOD) - 1
    with app.test_request_context("/v1/jobs", method="POST", data=GOOD,
                                  content_type=f"multipart/form-data; boundary={B}") as ctx:
        # The fast parser would have read it; werkzeug refuses its read of more than the limit.
        with pytest.raises(RequestEntityTooLarge):
            submitted_form(ctx.request)


def test_too_many_parts_are_refused_on_either_path():
    app = Flask("few_parts")
    app.config["MAX_FORM_PARTS"] = 2
    data = body(field("a", b"1"), field("b", b"2"), field("c", b"3"))
    for sent in (data, data.replace(b"\r\n", b"\n")):
        with app.test_request_context("/v1/jobs", method="POST", data=sent,
                                      content_type=f"multipart/form-data; boundary={B}") as ctx:
            with pytest.raises(RequestEntityTooLarge):
                submitted_form(ctx.request)


def test_the_form_is_read_once_for_the_submission_its_webhook_and_its_count():
    data = body(field("analyzer", b"images"), field("webhook", b"https://example.com/hook"))
    with APP.test_request_context("/v1/jobs", method="POST", data=data,
                                  content_type=f"multipart/form-data; boundary={B}") as ctx:
        assert form_read_so_far(ctx.request) is None
        form = submitted_form(ctx.request)
        assert submitted_form(ctx.request) is form and form_read_so_far(ctx.request) is form
        assert form.fields == {"analyzer": "images", "webhook": "https://example.com/hook"}
