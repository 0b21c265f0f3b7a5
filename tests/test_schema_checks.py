"""Schema checks of submissions: the compiled validator's answer and the reference's always agree on the outcome.

The submit path asks a compiled validator first and ``jsonschema`` only for a
value it refuses; these tests pin down that the reference keeps the last
word, in both directions, and that errors still name the field at fault.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from api.errors import UnprocessableEntity
from api.validation import _validate

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 100},
        "x": {"type": "number", "exclusiveMaximum": 1.5},
        "mode": {"enum": ["fast", "slow"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        "flag": {"type": "boolean"},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["n"],
}
REFERENCE = Draft202012Validator(SCHEMA)

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["n", "x", "mode", "tags", "flag", "email", "other"]), inner, max_size=4),
    max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(values)
def test_accepts_exactly_what_the_reference_accepts(value):
    valid = REFERENCE.is_valid(value)
    if valid:
        _validate(value, SCHEMA, "params")
    else:
        with pytest.raises(UnprocessableEntity):
            _validate(value, SCHEMA, "params")


def test_an_integer_past_64_bits_is_judged_by_the_reference():
    # The compiled validator refuses what it cannot represent; the reference accepts it.
    _validate(2**80, {"type": "integer"}, "params")
    with pytest.raises(UnprocessableEntity):
        _validate(2**80, {"type": "integer", "maximum": 5}, "params")


def test_formats_are_annotations_as_the_reference_treats_them():
    _validate({"n": 1, "email": "not an address"}, SCHEMA, "params")


def test_the_error_names_the_member_at_fault():
    with pytest.raises(UnprocessableEntity) as refused:
        _validate({"n": 1, "tags": ["ok", "long"]}, SCHEMA, "params")
    assert refused.value.field == "params.tags.1"
    assert "long" in str(refused.value)
