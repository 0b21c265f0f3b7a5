"""Job ids and delivery tags: random version-4 UUIDs, written as ``uuid`` writes them."""

from __future__ import annotations

import uuid

from tasks.ids import random_uuid


def test_random_uuid_is_a_version_4_uuid_in_its_usual_form():
    for _ in range(2000):
        text = random_uuid()
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_random_uuids_do_not_repeat():
    assert len({random_uuid() for _ in range(20000)}) == 20000
