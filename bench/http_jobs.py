"""One job over HTTP as a client runs it: POST, then long-poll until it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import requests

from bench.workloads import Workload

__all__ = ["JobClient", "JobFailure", "Outcome", "SessionClient", "run_job"]

_WAIT = 30  # the API's longest ?wait=


class JobClient(Protocol):
    """What ``run_job`` sends a job's requests through: answers with ``status_code``, ``text`` and ``json()``."""

    def post_job(self, job_number: int) -> Any: ...

    def get(self, path: str) -> Any: ...


class JobFailure(Exception):
    """A job that did not succeed, or an answer that was not what the API promises."""


@dataclass(frozen=True)
class Outcome:
    job: dict[str, Any]
    items: int
    submit_s: float  # POST sent to 202 read
    total_s: float  # POST sent to the succeeded job read
    finished_at: float  # perf_counter when the result was in hand


class SessionClient:
    """A job's two requests through a ``requests.Session``, as users' code sends them."""

    def __init__(self, session: requests.Session, url: str, workload: Workload):
        self.session, self.url, self.workload = session, url, workload

    def post_job(self, job_number: int):
        return self.session.post(f"{self.url}/v1/jobs", timeout=30, **self.workload.post_kwargs(job_number))

    def get(self, path: str):
        return self.session.get(f"{self.url}{path}", timeout=_WAIT + 30)


def run_job(client: JobClient, workload: Workload, job_number: int) -> Outcome:
    """POST job ``job_number`` of ``workload``, long-poll it to its end; raises ``JobFailure`` unless it succeeded."""
    began = time.perf_counter()
    answer = client.post_job(job_number)
    submitted = time.perf_counter()
    if answer.status_code != 202:
        raise JobFailure(f"POST /v1/jobs answered {answer.status_code}: {answer.text[:300]}")
    job = answer.json()
    while job["status"] not in ("succeeded", "failed", "canceled"):
        reply = client.get(f"/v1/jobs/{job['id']}?wait={_WAIT}")
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
