"""The Python client of the gpuq HTTP API, on ``requests``.

    from gpuq.client import Client
    client = Client("http://localhost:8000")
    job = client.wait(client.submit("digits", file="seven.png").id, timeout=60)
    print(job.result["digit"])

Errors are typed (``gpuq.client_errors``, one class per error code). Answers
``429`` (queue full) and ``503`` (Redis away) and connection failures are retried
with exponential backoff, honouring ``Retry-After`` (a refused connection too,
unless ``retry_refused=False`` and the API was never reached); a submission carries an
``Idempotency-Key`` (made up when not given), so a retried one never makes two jobs:
not after a ``503 outcome_unknown`` either (the API could not tell whether the
job was written), which, once the retries are spent, raises ``OutcomeUnknown``
with the job's id.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import requests

from gpuq import connection_failures
from gpuq.client_errors import (
    ApiError,
    ConnectionFailed,
    GpuqError,
    JobFailed,
    TooManyLongPolls,
    Unavailable,
    WaitTimeout,
    error_for,
)

__all__ = ["Client", "Event", "Job", "REJECTED", "TERMINAL"]

#: The status ``map`` gives an input the API refused: it never became a job.
REJECTED = "rejected"
TERMINAL = frozenset({"succeeded", "failed", "canceled", REJECTED})
_MISSING: Any = object()
#: The API's longest long-poll, seconds.
_MAX_WAIT = 30.0
#: 503 codes a long-poll is answered when the API holds all the waits it will: not retried, read instead.
_BUSY_WAITING = frozenset({TooManyLongPolls.code})
#: Refusals of a submit that concern its input (an empty file, a type the analyzer does not take, an invalid
#: input), unless their field names a part of the request every input of a ``map`` shares.
_INPUT_REFUSALS = frozenset({400, 413, 415, 422})
_SHARED_FIELDS = frozenset({"analyzer", "params", "webhook"})


@dataclass(frozen=True)
class Job:
    """A job object of the API, typed; ``raw`` keeps the whole answer. ``map`` also yields a ``rejected``
    one, without an id, for an input the API refused."""

    id: str | None
    analyzer: str
    status: str
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None
    eta: str | None = None
    progress: dict[str, Any] | None = None
    attempts: int = 0
    worker: str | None = None
    device: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] | None = None
    result: Any = None
    provenance: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    webhook: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)} - {"raw"}
        return cls(**{k: v for k, v in data.items() if k in known}, raw=data)

    @classmethod
    def rejected(cls, analyzer: str, error: dict[str, Any]) -> Job:
        """An input that never became a job; ``error`` has the ``code``, ``message`` and ``field`` of why."""
        return cls.from_dict({"id": None, "analyzer": analyzer, "status": REJECTED, "error": error})

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def fraction(self) -> float | None:
        value = (self.progress or {}).get("fraction")
        return float(value) if isinstance(value, (int, float)) else None

    def raise_for_status(self) -> Job:
        """This job, or ``JobFailed`` when it ended failed or canceled (or was rejected)."""
        if self.status in ("failed", "canceled", REJECTED):
            raise JobFailed(self)
        return self


@dataclass(frozen=True)
class Event:
    """One server-sent event of a job: ``kind`` is ``status``, ``progress``, ``expired`` or ``reconnect``."""

    kind: str
    job: Job | None
    id: str | None = None


class Client:
    """A client of one API. ``retry_refused=False`` raises ``ConnectionFailed`` at once when nothing
    listens at ``url`` (or its host name is unknown) instead of retrying, until the API is first reached
    (it answered, or accepted a connection that then broke): after that, a refused connection is the API
    restarting, and retried like any other failure, so an hour-long wait or batch outlives it.
    ``on_retry(error, seconds)`` is told of each retry before its wait, to show it."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 30.0, max_retries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 30.0, retry_refused: bool = True,
                 on_retry: Callable[[GpuqError, float], None] | None = None):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.retry_refused = retry_refused
        self.on_retry = on_retry
        self._api_reached = False  # whether any request got a connection: then something listens at url
        self._local = threading.local()  # a session per thread: map() calls from many

    # -- calls ------------------------------------------------------------------

    def submit(self, analyzer: str, *, file: str | os.PathLike | bytes | IO[bytes] | None = None,
               input: Any = _MISSING, params: dict[str, Any] | None = None, idempotency_key: str | None = None,
               webhook: str | None = None) -> Job:
        """Submit a job: an upload (``file``: a path, bytes or a binary file) or a JSON ``input``."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        if file is not None:
            if input is not _MISSING:
                raise ValueError("give either file or input, not both")
            name, data = _read_file(file)
            form = {"analyzer": analyzer}
            if params is not None:
                form["params"] = json.dumps(params)
            if webhook is not None:
                form["webhook"] = webhook
            response = self._request("POST", "/v1/jobs", headers=headers, data=form,
                                     files={"file": (name, data, "application/octet-stream")})
        else:
            body: dict[str, Any] = {"analyzer": analyzer}
            if input is not _MISSING:
                body["input"] = input
            if params is not None:
                body["params"] = params
            if webhook is not None:
                body["webhook"] = webhook
            response = self._request("POST", "/v1/jobs", headers=headers, json=body)
        return Job.from_dict(response.json())

    def get(self, job_id: str) -> Job:
        return Job.from_dict(self._request("GET", f"/v1/jobs/{job_id}").json())

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it has ended, by long-polls of up to 30 s; ``WaitTimeout`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = _MAX_WAIT if deadline is None else deadline - time.monotonic()
            step = max(0.0, min(_MAX_WAIT, remaining))
            try:
                job = Job.from_dict(self._request("GET", f"/v1/jobs/{job_id}", params={"wait": f"{step:.3f}"},
                                                  timeout=step + self.timeout, raise_at_once=_BUSY_WAITING).json())
            except Unavailable as busy:
                if busy.code not in _BUSY_WAITING:
                    raise
                # The API holds all the long-polls it will (README: Event streams): read now, then wait as asked.
                job = self.get(job_id)
                if not job.done:
                    time.sleep(max(0.0, min(busy.retry_after or 2.0, step)))
            if job.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout:g}s", job=job)

    def cancel(self, job_id: str) -> Job:
        return Job.from_dict(self._request("DELETE", f"/v1/jobs/{job_id}").json())

    def analyzers(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/analyzers").json()["analyzers"]

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The webhook delivery attempts of a job, oldest first."""
        return self._request("GET", f"/v1/jobs/{job_id}/deliveries").json()["deliveries"]

    def events(self, job_id: str) -> Iterator[Event]:
        """The job's server-sent events until it ends (reconnecting when the server asks to)."""
        while True:
            response = self._request("GET", f"/v1/jobs/{job_id}/events", stream=True,
                                     timeout=(self.timeout, 60.0), headers={"Accept": "text/event-stream"})
            reconnect = False
            try:
                for event in _parse_sse(response.iter_lines(decode_unicode=True)):
                    if event.kind == "reconnect":
                        reconnect = True
                        break
                    yield event
                    if event.job is None or event.job.done:
                        return
            except requests.RequestException as error:  # the API went away mid-stream
                raise self._connection_failed(error) from error
            finally:
                response.close()
            if not reconnect:
                return

    def map(self, analyzer: str, inputs: Iterable[Any], *, concurrency: int = 8, params: dict[str, Any] | None = None,
            timeout: float | None = None) -> Iterator[tuple[int, Job]]:
        """Submit one job per input, at most ``concurrency`` at a time; yield ``(index, job)`` as each ends.

        An input that is a ``Path``, bytes or a binary file is uploaded; anything else is a JSON input.
        A job that fails is yielded like any other (check ``job.status``). So is an input the API refuses
        (an empty or unreadable file, a type the analyzer does not take, an invalid input): a job of status
        ``rejected``, without an id, whose ``error`` says why; the other inputs go on. An error that would
        refuse every input (an unknown analyzer, invalid ``params``, no valid API key) or an API that cannot
        be reached is raised.
        """
        def one(item: Any) -> Job:
            try:
                submission = _submission(item)
            except OSError as error:
                return Job.rejected(analyzer, {"code": "unreadable_file", "message": str(error), "field": "file"})
            try:
                job = self.submit(analyzer, params=params, **submission)
            except ApiError as error:
                if error.status not in _INPUT_REFUSALS or (error.field or "").split(".")[0] in _SHARED_FIELDS:
                    raise
                return Job.rejected(analyzer, {"code": error.code, "message": error.message, "field": error.field})
            return self.wait(job.id, timeout=timeout)

        items = iter(enumerate(inputs))
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="gpuq-map") as pool:
            pending: dict[Future, int] = {}

            def fill() -> None:
                while len(pending) < max(1, concurrency):
                    try:
                        index, item = next(items)
                    except StopIteration:
                        return
                    pending[pool.submit(one, item)] = index

            fill()
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = pending.pop(future)
                        yield index, future.result()
                    fill()
            finally:
                for future in pending:
                    future.cancel()

    # -- plumbing ---------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                 timeout: Any = None, sleep: Callable[[float], None] = time.sleep,
                 raise_at_once: frozenset[str] = frozenset(), **kwargs: Any) -> requests.Response:
        """The answer to a request; 429 and 503 are retried with backoff, unless their code is in
        ``raise_at_once``, and connection failures too."""
        headers = dict(headers or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            delay = min(self.max_backoff, self.backoff * 2 ** attempt)
            try:
                response = self._session().request(method, self.url + path, headers=headers,
                                                   timeout=timeout or self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as error:
                failed = self._connection_failed(error)
                if connection_failures.was_connected(error):
                    self._api_reached = True
                if last or (failed.refused and not self.retry_refused and not self._api_reached):
                    raise failed from error
                self._retry_after_wait(failed, delay, sleep)
                continue
            self._api_reached = True
            if response.status_code < 400:
                return response
            retry_after = _retry_after(response.headers.get("Retry-After"))
            try:
                body = response.json()
            except ValueError:
                body = None
            error = error_for(response.status_code, body, retry_after)
            if response.status_code in (429, 503) and not last and error.code not in raise_at_once:
                response.close()
                self._retry_after_wait(error, min(self.max_backoff, max(delay, retry_after or 0.0)), sleep)
                continue
            raise error
        raise GpuqError("unreachable")  # pragma: no cover

    def _retry_after_wait(self, error: GpuqError, seconds: float, sleep: Callable[[float], None]) -> None:
        if self.on_retry is not None:
            self.on_retry(error, seconds)
        sleep(seconds)

    def _connection_failed(self, error: BaseException) -> ConnectionFailed:
        reason, refused = connection_failures.describe(error)
        return ConnectionFailed(f"cannot reach the API at {self.url}: {reason}", url=self.url, reason=reason,
                                refused=refused)


def _submission(item: Any) -> dict[str, Any]:
    """``submit``'s keyword for one input of ``map``: a file read now (so an unreadable one raises
    ``OSError`` here, before any request), or the JSON input."""
    if isinstance(item, (os.PathLike, bytes, bytearray)) or hasattr(item, "read"):
        name, data = _read_file(item)
        upload = io.BytesIO(data)
        upload.name = name
        return {"file": upload}
    return {"input": item}


def _read_file(file: str | os.PathLike | bytes | IO[bytes]) -> tuple[str, bytes]:
    if isinstance(file, (bytes, bytearray)):
        return "upload", bytes(file)
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        return path.name, path.read_bytes()
    return Path(getattr(file, "name", "upload")).name, file.read()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back on the backoff


def _parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    kind, data, event_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                job = Job.from_dict(payload) if kind in ("status", "progress") else None
                yield Event(kind=kind, job=job, id=event_id)
            kind, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
