"""A process dying in the middle of a batch: every job delivered again, the poison one failing alone."""

from __future__ import annotations

from tests.fixtures.batching import batches


def _hold_the_worker(stack) -> dict:
    """A 2-second job, running: the jobs submitted next wait behind it in the queue."""
    job = stack.submit("batcher", input={"seconds": 2})
    stack.wait(job["id"], {"running"})
    return job


def _assert_it_failed_worker_lost_within_the_bound(stack, poison: str, timeout: float) -> None:
    assert stack.wait(poison, timeout=timeout)["status"] == "failed"
    failed = stack.job(poison)
    assert failed["error"]["code"] == "worker_lost", failed
    assert stack.counter("runs", poison) <= 3  # the attempt bound holds


def test_a_crash_mid_batch_delivers_every_job_again_and_the_poison_job_fails_alone(make_stack):
    stack = make_stack(analyzers="tests.fixtures.batching:Batcher")
    _hold_the_worker(stack)
    innocent = [stack.submit("batcher", input={"n": n})["id"] for n in range(2)]
    poison = stack.submit("batcher", input={"crash": 99})["id"]
    innocent.append(stack.submit("batcher", input={"n": 3})["id"])

    _assert_it_failed_worker_lost_within_the_bound(stack, poison, timeout=90)
    for job_id in innocent:
        done = stack.wait(job_id, timeout=60)
        assert done["status"] == "succeeded", done
        assert stack.counter("done", job_id) == 1  # finished exactly once
        assert done["attempts"] == 2 and done["timings"]["batch_size"] == 1  # again, alone
    calls = batches(stack.redis)
    assert [*innocent[:2], poison, innocent[2]] in calls  # the batch that crashed
    assert [poison] in calls  # after that, the poison job ran alone


def test_a_crash_in_a_batch_that_ran_on_delivers_its_jobs_again_and_leaves_the_lead_done(make_stack):
    stack = make_stack(analyzers="tests.fixtures.batching:Batcher")
    lead = _hold_the_worker(stack)
    # Behind the lead, which runs alone: a batch of 8 that runs on from it, then one with the poison job.
    first = [stack.submit("batcher", input={"n": n})["id"] for n in range(8)]
    poison = stack.submit("batcher", input={"crash": 99})["id"]
    second = [stack.submit("batcher", input={"n": n})["id"] for n in range(9, 12)]

    assert stack.wait(lead["id"], timeout=30)["status"] == "succeeded"
    _assert_it_failed_worker_lost_within_the_bound(stack, poison, timeout=120)
    for job_id in first + second:
        done = stack.wait(job_id, timeout=90)
        assert done["status"] == "succeeded", done
        assert done["result"]["echo"]["n"] in range(12)
        assert 1 <= stack.counter("done", job_id) <= 2  # the batch before the crash may have run twice
    calls = batches(stack.redis)
    assert calls[:2] == [[lead["id"]], first]  # the first batch ran on from the lead's, in its task
    assert [poison, *second] in calls and [poison] in calls  # the crash, then the poison job alone
    assert stack.job(lead["id"])["attempts"] == 1  # the lead's task was retried, and found its job done
