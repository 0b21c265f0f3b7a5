"""JSON for results in a few microseconds, meaning exactly what the backend's encoder writes.

The recorder thread encodes a batch's results while the model's thread runs
the next batch. The standard library's C encoder holds the GIL for the whole
call: about 0.2 ms for a 256-frame digits result, during which the model's
thread cannot launch its next operator (the switch interval does not reach
into C). orjson writes the same value about thirty times faster.

orjson is not the backend's encoder, though: it writes NaN as null, and
UUIDs, enums and dataclasses as plain values where kombu either marks their
type or refuses them. So its text is used only when reading it back gives a
value equal to the one encoded; anything else (a NaN, a UUID, a tuple, a str
subclass, a datetime) goes to the backend's own encoder, as before. Both
texts are standard JSON, and any reader decodes them to the same value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["dumps_like"]

#: Types orjson would write as plain values but kombu's encoder marks or refuses:
#: hand them to ``default``, which sends the whole value to the fallback.
_PASS_THROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


class _NotPlain(TypeError):
    pass


def _refuse(value: Any) -> Any:
    raise _NotPlain(type(value).__name__)


def dumps_like(value: Any, fallback: Callable[[Any], bytes | str]) -> bytes | str:
    """``value`` as JSON: orjson's text when it reads back equal to ``value``, else ``fallback(value)``."""
    try:
        text = orjson.dumps(value, default=_refuse, option=_PASS_THROUGH)
    except TypeError:  # orjson.JSONEncodeError too: a non-str key, an int beyond 64 bits, a lone surrogate
        return fallback(value)
    # Equality in C, over the whole structure: NaN != None (orjson's null), a UUID or an
    # enum != its string or value, a tuple != a list. Any of those takes the fallback.
    if orjson.loads(text) != value:
        return fallback(value)
    return text
