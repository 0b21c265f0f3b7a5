"""Random version-4 UUIDs as strings, made without building a ``uuid.UUID``.

Every accepted job takes two (its id and its broker message's delivery tag).
``str(uuid.uuid4())`` spends most of its time in ``UUID``'s constructor and
``__str__``; the same 122 random bits from ``os.urandom``, with the version and
variant bits set as RFC 4122 says, written out directly cost less than half of it.
"""

from __future__ import annotations

import os

__all__ = ["random_uuid"]


def random_uuid() -> str:
    """A random (version 4) UUID, written as ``str(uuid.uuid4())`` writes it."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
