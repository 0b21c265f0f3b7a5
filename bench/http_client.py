"""A benchmark client's HTTP: one keep-alive connection, bodies built once, for a fraction of ``requests``' CPU.

On a machine where the clients share the host's cores with the API and
Redis, the clients' own CPU is taken from the service they measure. With
``requests``, 32 clients of coarse ``digits`` jobs (a 67 KB upload each,
its 256-frame result read back) used 0.32 to 0.34 cores at 80 to 90 jobs/s,
about 4 ms a job; with this client, 0.09 to 0.10 cores at 91 to 103 jobs/s,
about 1 ms. The load phase's clients use this; the overhead phase keeps
``requests``, as users' code does.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

from bench.submit import multipart
from bench.workloads import Workload

__all__ = ["Answer", "ApiConnection"]

_CLOSED_BY_THE_SERVER = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Answer:
    """A response: its status and its body, parsed as JSON on demand."""

    __slots__ = ("body", "status_code")

    def __init__(self, status_code: int, body: bytes):
        self.status_code, self.body = status_code, body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class ApiConnection:
    """One client's connection to the API, reopened if the server closes it.

    ``post_job`` and ``get`` stand in for ``requests.Session.post`` and
    ``.get`` in ``bench.http_jobs.run_job``.
    """

    def __init__(self, url: str, workload: Workload, timeout: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port, self.prefix = parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/")
        self.workload, self.timeout = workload, timeout
        self._connection: http.client.HTTPConnection | None = None
        self._bodies: dict[int, tuple[bytes, str]] = {}  # input index -> (body, content type)

    def post_job(self, job_number: int) -> Answer:
        body, content_type = self._body(job_number)
        return self._request("POST", "/v1/jobs", body, {"Content-Type": content_type})

    def get(self, path: str) -> Answer:
        return self._request("GET", path)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Answer:
        try:
            return self._send(method, path, body, headers or {})
        except _CLOSED_BY_THE_SERVER:
            # A keep-alive connection the server closed between requests: once more on a new one.
            return self._send(method, path, body, headers or {})

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self._connection.request(method, self.prefix + path, body=body, headers=headers)
            response = self._connection.getresponse()
            answer = Answer(response.status, response.read())
        except _CLOSED_BY_THE_SERVER:
            self.close()
            raise
        if response.will_close:
            self.close()
        return answer

    def _body(self, job_number: int) -> tuple[bytes, str]:
        index = job_number % len(self.workload.inputs)
        if index not in self._bodies:
            value = self.workload.inputs[index]
            if self.workload.upload:
                self._bodies[index] = multipart({"analyzer": self.workload.analyzer}, "input", value)
            else:
                body = json.dumps({"analyzer": self.workload.analyzer, "input": value}).encode()
                self._bodies[index] = (body, "application/json")
        return self._bodies[index]

