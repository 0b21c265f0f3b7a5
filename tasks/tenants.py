"""A tenant's own jobs: the listing behind ``GET /v1/jobs``.

The submit script (tasks/submission.py) adds every job to its tenant's index,
a sorted set scored by creation time, in the same atomic step that writes the
record. Listing walks that index newest first, reads the records in one
round trip per page and drops entries whose record has expired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis import Redis

from tasks import keys
from tasks.jobs import JobRecord

__all__ = ["CURSOR_PATTERN", "JobPage", "decode_cursor", "encode_cursor", "list_jobs"]

#: Index entries read per round trip while a status filter skips records.
_CHUNK = 100
#: Most index entries one listing call reads, so a rare status cannot make it scan without end.
_SCAN_LIMIT = 5000


#: What ``encode_cursor`` makes: a creation time and a job id (a UUID).
CURSOR_PATTERN = r"^[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?_[0-9a-f-]{1,64}$"
_CURSOR = re.compile(CURSOR_PATTERN)


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobRecord]
    #: Where the next page starts, or None when there is none.
    next_cursor: str | None


def encode_cursor(created_at: float, job_id: str) -> str:
    return f"{created_at!r}_{job_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(created time, job id) of the last job a page gave; ValueError when malformed."""
    if not _CURSOR.fullmatch(cursor):
        raise ValueError(cursor)
    score, _, job_id = cursor.partition("_")
    return float(score), job_id


def list_jobs(redis: Redis, tenant: str, *, limit: int, status: str | None = None,
              cursor: str | None = None) -> JobPage:
    """Up to ``limit`` of the tenant's jobs, newest first, after ``cursor``, of ``status`` if given."""
    index = keys.tenant_jobs(tenant)
    after = decode_cursor(cursor) if cursor else None
    found: list[JobRecord] = []
    # Read from the cursor's score inclusive, then skip what the cursor's page already
    # gave: several jobs may share a creation time (Redis orders them by id, reversed here).
    top: str | float = "+inf" if after is None else after[0]
    scanned = 0
    last: tuple[float, str] | None = after
    while scanned < _SCAN_LIMIT:
        entries = redis.zrevrangebyscore(index, top, "-inf", start=0, num=_CHUNK, withscores=True)
        entries = [(m.decode(), s) for m, s in entries]
        if last is not None:
            entries = [(m, s) for m, s in entries if s < last[0] or (s == last[0] and m < last[1])]
        if not entries:
            return JobPage(found, None)
        scanned += len(entries)
        with redis.pipeline(transaction=False) as pipe:
            for member, _ in entries:
                pipe.hgetall(keys.job(member))
            raws = pipe.execute()
        gone = []
        for (member, score), raw in zip(entries, raws, strict=True):
            last = (score, member)
            if not raw:
                gone.append(member)
                continue
            record = JobRecord.from_hash(raw)
            if status is None or record.status == status:
                found.append(record)
                if len(found) == limit:
                    if gone:
                        redis.zrem(index, *gone)
                    return JobPage(found, encode_cursor(score, member))
        if gone:
            redis.zrem(index, *gone)
        top = last[0]
    # Scanned as far as one call may: hand back a cursor so the client goes on.
    return JobPage(found, encode_cursor(*last) if last else None)
