"""Batching through the whole stack: HTTP, Redis, a real Celery worker."""

from __future__ import annotations

import pytest
import requests

from tests.fixtures.batching import batches
from tests.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("batching"), analyzers="tests.fixtures.batching:Batcher,noop").start()
    yield stack
    stack.stop()


def test_jobs_queued_behind_a_long_one_run_as_one_batch(stack):
    blocker = stack.submit("batcher", input={"seconds": 2})
    stack.wait(blocker["id"], {"running"})
    queued = [stack.submit("batcher", input={"n": n})["id"] for n in range(6)]
    for n, job_id in enumerate(queued):
        done = stack.wait(job_id)
        assert done["status"] == "succeeded", done
        assert done["result"] == {"echo": {"n": n}, "batch": 6}
        assert done["timings"]["batch_size"] == 6
    assert queued in batches(stack.redis)


def test_noop_jobs_queued_ahead_drain_in_batches_with_every_result_stored(stack):
    blocker = stack.submit("batcher", input={"seconds": 4})
    stack.wait(blocker["id"], {"running"})
    with requests.Session() as session:
        ids = [session.post(f"{stack.url}/v1/jobs", json={"analyzer": "noop", "input": n}, timeout=10).json()["id"]
               for n in range(300)]
        done = [session.get(f"{stack.url}/v1/jobs/{job_id}?wait=30", timeout=40).json() for job_id in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 300
    assert [d["result"] for d in done] == [{"input": n} for n in range(300)]
    sizes = [d["timings"]["batch_size"] for d in done]
    assert max(sizes) > 1 and sum(sizes) / len(sizes) > 8, sizes
