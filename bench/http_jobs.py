"""One job over HTTP as a client runs it: POST, then long-poll until it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests

from bench.workloads import Workload

__all__ = ["JobFailure", "Outcome", "run_job"]

_WAIT = 30  # the API's longest ?wait=


class JobFailure(Exception):
    """A job that did not succeed, or an answer that was not what the API promises."""


@dataclass(frozen=True)
class Outcome:
    job: dict[str, Any]
    items: int
    submit_s: float  # POST sent to 202 read
    total_s: float  # POST sent to the succeeded job read
    finished_at: float  # perf_counter when the result was in hand


def run_job(session: requests.Session, url: str, workload: Workload, job_number: int) -> Outcome:
    began = time.perf_counter()
    answer = session.post(f"{url}/v1/jobs", timeout=30, **workload.post_kwargs(job_number))
    submitted = time.perf_counter()
    if answer.status_code != 202:
        raise JobFailure(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:300]}")
    job = answer.json()
    while job["status"] not in ("succeeded", "failed", "canceled"):
        reply = session.get(f"{url}/v1/jobs/{job['id']}", params={"wait": _WAIT}, timeout=_WAIT + 30)
        if reply.status_code != 200:
            raise JobFailure(f"GET /v1/jobs/{job['id']} answered {reply.status_code}: {reply.text[:300]}")
        job = reply.json()
    done = time.perf_counter()
    if job["status"] != "succeeded":
        raise JobFailure(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    try:
        items = workload.items_in(job.get("result"))
    except ValueError as error:
        raise JobFailure(f"job {job['id']}: {error}") from None
    return Outcome(job=job, items=items, submit_s=submitted - began, total_s=done - began, finished_at=done)
