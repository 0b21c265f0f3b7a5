"""Turn a POST /v1/jobs request into a checked submission, or a 4xx naming the field.

Nothing is written to Redis here: a request that fails any check leaves no
trace. Uploads are recognised by their bytes (``tasks.media``), never by
their name or declared content type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema_rs
from flask import Request
from jsonschema import Draft202012Validator
from werkzeug.exceptions import BadRequest as WerkzeugBadRequest

from api.body_limit import check_body_for
from api.errors import BadRequest, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType
from api.form import Upload, submitted_form
from tasks import strict_json
from tasks.media import sniff_media_type

__all__ = ["Submission", "parse_submission"]

JSON_MEDIA_TYPE = "application/json"
#: What a submission may hold: a JSON body's members, a form's fields (``file`` the upload).
_BODY_MEMBERS = frozenset({"analyzer", "input", "params", "webhook"})
_FORM_FIELDS = _BODY_MEMBERS | {"file"}
#: The longest error message a validation failure gives.
_MESSAGE_MOST = 500
_MISSING = object()


@dataclass(frozen=True)
class Submission:
    analyzer: str
    input_bytes: bytes
    input_media_type: str
    params: dict[str, Any]
    spec: dict[str, Any]


SpecLookup = Callable[[str], "dict[str, Any] | None"]


def parse_submission(request: Request, lookup_spec: SpecLookup, known_names: Callable[[], list[str]]) -> Submission:
    mimetype = request.mimetype
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = submitted_form(request)
        _refuse_unknown(form.names, _FORM_FIELDS, "form field")
        fields = form.fields
        analyzer = fields.get("analyzer")
        raw_params = fields.get("params")
        params = _json_field(raw_params, "params") if raw_params not in (None, "") else {}
        raw_input = fields.get("input")
        json_input = _json_field(raw_input, "input") if raw_input not in (None, "") else _MISSING
        upload = form.upload
    elif mimetype == JSON_MEDIA_TYPE:
        try:
            # Parsed by the app's JSON provider, which is tasks.strict_json (api/__init__.py), and kept
            # on the request for the other readers of the body (the webhook field, the metrics hook).
            body = request.get_json()
        except WerkzeugBadRequest as error:
            reason = getattr(error.__cause__, "description", None) or error.description
            raise BadRequest(f"body is not valid JSON: {reason.removeprefix('Failed to decode JSON object: ')}",
                             field="body", code="malformed_json") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object", field="body")
        _refuse_unknown(body, _BODY_MEMBERS, "member")
        analyzer = body.get("analyzer")
        params = body.get("params", {})
        params = {} if params is None else params
        json_input = body.get("input", _MISSING)
        upload = None
    else:
        raise UnsupportedMediaType(
            f"send multipart/form-data (or a url-encoded form) or application/json, "
            f"not {mimetype or 'no content type'}",
            field="body")

    spec = _analyzer_spec(analyzer, lookup_spec, known_names)
    check_body_for(request, spec)
    _check_params(params, spec)
    if upload is not None and upload.filename:
        if json_input is not _MISSING:
            raise UnprocessableEntity("send either a file or an input, not both", field="input")
        data, media_type = _check_upload(upload, spec)
    else:
        data, media_type = _check_json_input(json_input, spec)
    return Submission(analyzer=spec["name"], input_bytes=data, input_media_type=media_type, params=params,
                      spec=spec)


def _refuse_unknown(names: Iterable[str], known: frozenset[str], what: str) -> None:
    """422 naming the first name not in ``known``: a misspelt ``"param"`` would otherwise be dropped
    without a word and the job run without its params."""
    unknown = sorted(set(names) - known)
    if unknown:
        raise UnprocessableEntity(f"unknown {what} {_excerpt(unknown[0])}; a submission has "
                                  f"{', '.join(sorted(known))}", field=unknown[0][:64], code="unknown_field")


def _excerpt(value: Any, most: int = 60) -> str:
    """``repr(value)``, cut to ``most`` characters: an error quotes what it refuses, not all of it."""
    text = repr(value)
    return text if len(text) <= most else f"{text[:most]}… ({len(text)} characters)"


def _json_field(raw: str | bytes, field: str) -> Any:
    """``raw`` decoded as the workers will decode it (``tasks.strict_json``): what is taken here, they can read."""
    try:
        return strict_json.loads(raw)
    except strict_json.UnacceptableJson as error:
        raise BadRequest(f"{field} is not valid JSON: {error}", field=field, code="malformed_json") from None


def _analyzer_spec(analyzer: Any, lookup_spec: SpecLookup, known_names: Callable[[], list[str]]) -> dict[str, Any]:
    if analyzer is None or analyzer == "":
        raise UnprocessableEntity("analyzer is required", field="analyzer", code="missing_field")
    if not isinstance(analyzer, str):
        raise UnprocessableEntity("analyzer must be a string", field="analyzer")
    spec = lookup_spec(analyzer)
    if spec is None:
        names = ", ".join(known_names()) or "none yet: no worker has started"
        raise UnprocessableEntity(f"unknown analyzer {analyzer!r}; known: {names}",
                                  field="analyzer", code="unknown_analyzer")
    return spec


def _check_params(params: Any, spec: dict[str, Any]) -> None:
    if not isinstance(params, dict):
        raise UnprocessableEntity("params must be a JSON object", field="params")
    _validate(params, spec["params_schema"], "params")


def _check_upload(upload: Upload, spec: dict[str, Any]) -> tuple[bytes, str]:
    accepted = spec["media_types"]
    if not accepted:
        raise UnprocessableEntity(f"analyzer {spec['name']!r} takes a JSON input, not a file", field="file")
    limit = spec["max_input_bytes"]
    data = upload.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"file is over the {spec['name']!r} limit of {limit} bytes", field="file")
    if not data:
        raise UnprocessableEntity("file is empty", field="file")
    media_type = sniff_media_type(data)
    if media_type not in accepted:
        what = media_type or "not a recognised format"
        raise UnsupportedMediaType(
            f"file is {what}; {spec['name']!r} accepts {', '.join(accepted)}", field="file")
    return data, media_type


def _check_json_input(json_input: Any, spec: dict[str, Any]) -> tuple[bytes, str]:
    schema = spec["input_schema"]
    if schema is None:
        if json_input is _MISSING or json_input is None:
            raise UnprocessableEntity(
                f"file is required: {spec['name']!r} takes an upload of {', '.join(spec['media_types'])}",
                field="file", code="missing_field")
        raise UnprocessableEntity(f"analyzer {spec['name']!r} takes a file upload, not a JSON input",
                                  field="input")
    value = None if json_input is _MISSING else json_input
    _validate(value, schema, "input")
    data = json.dumps(value, separators=(",", ":")).encode()
    if len(data) > spec["max_input_bytes"]:
        raise PayloadTooLarge(f"input is over the {spec['name']!r} limit of {spec['max_input_bytes']} bytes",
                              field="input")
    return data, JSON_MEDIA_TYPE


def _validate(value: Any, schema: dict[str, Any], field: str) -> None:
    checks = _checks_of(schema)
    if checks.passes(value):
        return
    error = next(iter(checks.explained.iter_errors(value)), None)
    if error is None:
        return
    path = ".".join(str(p) for p in error.absolute_path)
    where = f"{field}.{path}" if path else field
    # jsonschema's message opens with the whole offending value: a 100,001-item array made a 500 KB error.
    message = error.message.replace(repr(error.instance), _excerpt(error.instance), 1)
    raise UnprocessableEntity(f"{where}: {message}"[:_MESSAGE_MOST], field=where[:_MESSAGE_MOST])


class _SchemaChecks:
    """One schema, checked two ways: a compiled (Rust) validator answers "valid?" in well under a
    microsecond, where the reference ``jsonschema`` takes some 20 on a small object; only a value it
    refuses is looked at again by ``jsonschema``, which names the field at fault and has the last word,
    so the two disagreeing can only ever cost time."""

    def __init__(self, schema: dict[str, Any]):
        self.explained = Draft202012Validator(schema)
        try:
            # Formats are annotations in draft 2020-12, as ``jsonschema`` treats them by default.
            self._compiled = jsonschema_rs.Draft202012Validator(schema, validate_formats=False)
        except Exception:  # a schema it cannot compile: the reference validator alone decides
            self._compiled = None

    def passes(self, value: Any) -> bool:
        if self._compiled is None:
            return False
        try:
            return self._compiled.is_valid(value)
        except Exception:  # a value it cannot take (say, an int past 64 bits): ask the reference
            return False


#: Checks by the id of the schema object they were made for (kept, so the id cannot be reused):
#: the catalog hands out the same spec for a while, and writing it out as JSON to look it up cost
#: as much as validating.
_BY_IDENTITY: dict[int, tuple[dict[str, Any], _SchemaChecks]] = {}
_BY_IDENTITY_MAX = 256


def _checks_of(schema: dict[str, Any]) -> _SchemaChecks:
    entry = _BY_IDENTITY.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    checks = _checks(json.dumps(schema, sort_keys=True))
    if len(_BY_IDENTITY) >= _BY_IDENTITY_MAX:  # the catalog's refreshes leave old specs behind
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(schema)] = (schema, checks)
    return checks


@lru_cache(maxsize=256)
def _checks(schema_json: str) -> _SchemaChecks:
    return _SchemaChecks(json.loads(schema_json))
