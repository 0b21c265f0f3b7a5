"""The JSON that gpuq accepts, the same at the API and in the worker.

CPython's ``json`` raises ``RecursionError`` somewhere near 1,000 levels of
nesting, and where depends on the caller's stack: a document that the API
parsed could fail in a worker, in the middle of a batch. It also reads
``NaN``, ``Infinity`` and ``1e999`` (as infinity), which strict JSON parsers
refuse. Both sides decode with ``loads`` here, so what the API accepts, the
worker can read: at most ``MAX_DEPTH`` levels of arrays and objects, and only
finite numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_DEPTH", "UnacceptableJson", "check", "loads"]

#: Most levels of nested arrays and objects in a document (a bare value is level 0).
MAX_DEPTH = 64


class UnacceptableJson(ValueError):
    """Raised for text that is not JSON, or JSON that gpuq does not take (too deep, a number not finite)."""


def loads(text: str | bytes | bytearray) -> Any:
    """The value of ``text``; raises ``UnacceptableJson`` (a ``ValueError``) saying why it is refused."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise UnacceptableJson(f"nested more than {MAX_DEPTH} levels deep") from None
    except UnacceptableJson:
        raise
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise UnacceptableJson(str(error)) from None
    check(value)
    return value


def check(value: Any) -> None:
    """Raise ``UnacceptableJson`` if ``value`` nests deeper than ``MAX_DEPTH`` or holds a number not finite.

    Iterative, so that it cannot itself run out of stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            if isinstance(item, float) and not math.isfinite(item):
                raise UnacceptableJson(f"{item} is not a JSON number")
            continue
        if depth + 1 > MAX_DEPTH:
            raise UnacceptableJson(f"nested more than {MAX_DEPTH} levels deep")
        for child in children:
            if isinstance(child, (dict, list, tuple, float)):
                stack.append((child, depth + 1))


def _refuse_constant(name: str) -> Any:
    raise UnacceptableJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise UnacceptableJson(f"{text} is out of range for a JSON number")
    return number
