"""One runner per job, honest answers: runs paused or cut off past their lease, Redis stalled under submits,
poison inputs among other tenants' jobs.

Each test asserts what the job state machine promises (tasks/lifecycle.py): no two runs of a job write, no
terminal answer changes once given, no 5xx whose job ran (unless it carried the job's id), nothing lost.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from tasks import keys
from tasks.jobs import JobStore
from tasks.submission import submit_job
from tests.stack import Stack, parent_pid, start_api, start_workers, wait_for_workers, wait_until
from tests.tcp_proxy import TcpProxy

TERMINAL = {"succeeded", "failed", "canceled"}
#: What a terminal answer is made of: none of it may change once a client has seen it.
ANSWER = ("status", "result", "error", "finished_at", "worker", "attempts")


class AnswerWatcher:
    """Reads a job over HTTP every 50 ms, as a polling client would, and keeps every answer."""

    def __init__(self, url: str, job_id: str):
        self.url, self.job_id = url, job_id
        self.answers: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> AnswerWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                self.answers.append(session.get(f"{self.url}/v1/jobs/{self.job_id}", timeout=5).json())
            except requests.RequestException:
                pass
            time.sleep(0.05)

    def assert_no_terminal_answer_changed(self) -> dict:
        ended = [{k: a.get(k) for k in ANSWER} for a in self.answers if a.get("status") in TERMINAL]
        assert ended, "the watcher never saw the job end"
        assert all(answer == ended[0] for answer in ended), f"a terminal answer changed: {ended[0]} then " \
            f"{next(a for a in ended if a != ended[0])}"
        return ended[0]


def _pid_of(stack_redis, worker: str) -> int:
    from tasks import catalog

    return next(w["pid"] for w in catalog.live_workers(stack_redis) if w["name"] == worker)


def _taken_over(stack: Stack, job_id: str, first: str, timeout: float = 30) -> dict:
    return wait_until(lambda: (job := stack.job(job_id))["status"] == "running" and job["worker"] not in
                       (None, first) and job, timeout, "another worker to take the job over")


@pytest.mark.parametrize("paused", ["model process", "whole worker"])
def test_a_runner_paused_past_its_lease_stops_at_its_next_progress_report_and_never_writes(make_stack, paused):
    stack = make_stack(workers=2)
    job = stack.submit(params={"seconds": 12, "progress": True})
    first = stack.wait(job["id"], {"running"})["worker"]
    wait_until(lambda: stack.job(job["id"])["progress"], 10, "the first run's progress")
    child = _pid_of(stack.redis, first)
    victims = [child, parent_pid(child)] if paused == "whole worker" else [child]
    with AnswerWatcher(stack.url, job["id"]) as watcher:
        for pid in victims:
            os.kill(pid, signal.SIGSTOP)
        try:
            taken = _taken_over(stack, job["id"], first)
            new_child = _pid_of(stack.redis, taken["worker"])
        finally:
            for pid in reversed(victims):
                os.kill(pid, signal.SIGCONT)
        # The paused run still has seconds of work to go: it learns at its next report that the job is
        # another's, and stops there, without finishing it and without writing anything.
        wait_until(lambda: "lease was revoked" in stack.workers.output(), 10, "the paused run to learn it")
        assert stack.counter("done", job["id"]) == 0
        assert stack.job(job["id"])["status"] == "running"
        done = stack.wait(job["id"], timeout=60)
        time.sleep(1)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert done["result"]["pid"] == new_child and done["worker"] == taken["worker"]
    assert stack.counter("done", job["id"]) == 1 and stack.counter("runs", job["id"]) == 2
    assert watcher.assert_no_terminal_answer_changed()["result"] == done["result"]


def test_a_paused_runner_that_ends_while_the_new_run_goes_on_is_refused(make_stack):
    stack = make_stack(workers=2)
    job = stack.submit(params={"seconds": 4})
    first = stack.wait(job["id"], {"running"})["worker"]
    child = _pid_of(stack.redis, first)
    with AnswerWatcher(stack.url, job["id"]) as watcher:
        os.kill(child, signal.SIGSTOP)
        try:
            taken = _taken_over(stack, job["id"], first)
        finally:
            os.kill(child, signal.SIGCONT)
        # Its time ran out while it was paused: the old run finishes its work at once and tries to end
        # the job, while the new run has seconds to go. Its end and result are refused.
        wait_until(lambda: stack.counter("done", job["id"]) == 1, 10, "the paused run to finish its work")
        wait_until(lambda: "lease was revoked" in stack.workers.output(), 10, "the refusal")
        assert stack.job(job["id"])["status"] == "running"
        done = stack.wait(job["id"], timeout=60)
        time.sleep(1)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert done["result"]["pid"] == _pid_of(stack.redis, taken["worker"])
    assert stack.counter("done", job["id"]) == 2  # both runs did the work; only the current one wrote
    assert watcher.assert_no_terminal_answer_changed()["result"] == done["result"]


def test_a_worker_cut_off_from_redis_past_its_lease_never_writes_when_it_comes_back(tmp_path):
    stack = Stack(tmp_path / "stack")
    proxy = TcpProxy(stack.redis_server.port)
    cut_off = direct = None
    try:
        cut_off = start_workers({**stack.env, "GPUQ_REDIS_URL": proxy.url, "GPUQ_HOSTNAME": "cut-off",
                                 "GPUQ_CPU_WORKERS": "1"}, tmp_path, name="cut-off")
        wait_for_workers(stack.redis_server.url, {"faulty"}, cut_off)
        stack.api_process, stack.url = start_api(stack.env, tmp_path, workers=1)
        job = stack.submit(params={"seconds": 14})
        first = stack.wait(job["id"], {"running"})["worker"]
        assert first.endswith("@cut-off")
        direct = start_workers({**stack.env, "GPUQ_HOSTNAME": "direct", "GPUQ_CPU_WORKERS": "1"}, tmp_path,
                               name="direct")
        wait_for_workers(stack.redis_server.url, {"faulty"}, direct, count=2)
        with AnswerWatcher(stack.url, job["id"]) as watcher:
            proxy.cut()
            try:
                taken = _taken_over(stack, job["id"], first)
            finally:
                proxy.restore()
            assert taken["worker"].endswith("@direct")
            # The cut-off run finishes its work once it is back, and its end is refused.
            wait_until(lambda: stack.counter("done", job["id"]) == 1, 30, "the cut-off run to finish its work")
            wait_until(lambda: "lease was revoked" in cut_off.output(), 15, "the refusal")
            assert stack.job(job["id"])["status"] == "running"
            done = stack.wait(job["id"], timeout=60)
            time.sleep(1)
        assert done["status"] == "succeeded" and done["worker"] == taken["worker"] and done["attempts"] == 2
        assert done["result"]["pid"] == _pid_of(stack.redis, taken["worker"])
        assert watcher.assert_no_terminal_answer_changed()["result"] == done["result"]
    finally:
        for process in (direct, cut_off):
            if process is not None:
                process.stop(timeout=30)
        proxy.close()
        stack.stop()


_BUSY = """
local began = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - began[1]) * 1000000 + (now[2] - began[2]) > tonumber(ARGV[1]) * 1000 then break end
end
return 1
"""


@pytest.mark.parametrize("stall", ["paused", "long script"])
def test_submits_while_redis_stalls_are_answered_honestly(make_stack, stall):
    stack = make_stack()
    answers: list[tuple[int | None, dict, dict, float]] = []
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            began = time.monotonic()
            try:
                response = session.post(f"{stack.url}/v1/jobs", json={"analyzer": "faulty", "params": {}},
                                        timeout=30)
                answers.append((response.status_code, response.json(), dict(response.headers),
                                time.monotonic() - began))
            except requests.RequestException as error:
                answers.append((None, {"exception": str(error)}, {}, time.monotonic() - began))
            time.sleep(0.15)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)
    redis_pid = stack.redis_server.process.pid
    if stall == "paused":
        os.kill(redis_pid, signal.SIGSTOP)
        time.sleep(4.0)
        os.kill(redis_pid, signal.SIGCONT)
    else:
        stack.redis.eval(_BUSY, 0, 4000)
    time.sleep(1.5)
    stop.set()
    for thread in clients:
        thread.join(timeout=60)

    codes = [status for status, *_ in answers]
    tally = {code: codes.count(code) for code in set(codes)}
    print(f"redis {stall} 4 s under submits: answers {tally}")
    assert set(tally) <= {202, 503}, answers
    accepted = {body["id"] for status, body, _, _ in answers if status == 202}
    unknown = {body["error"]["id"] for status, body, _, _ in answers
               if status == 503 and body["error"]["code"] == "outcome_unknown"}
    for status, body, headers, _ in answers:
        if status == 503:
            assert body["error"]["code"] in ("unavailable", "outcome_unknown"), body
            if body["error"]["code"] == "outcome_unknown":
                assert headers["Location"] == f"/v1/jobs/{body['error']['id']}"
    # The stall bit: some submits waited past the API's Redis timeout (2 s) and were resolved after it.
    assert max(seconds for *_, seconds in answers) > 2.0
    written = {key.decode().removeprefix(keys.job("")) for key in stack.redis.scan_iter(keys.job("*"))}
    assert accepted <= written, "a job answered 202 is missing"
    assert written - accepted <= unknown, f"jobs written but answered with a plain 5xx: {written - accepted - unknown}"
    for job_id in accepted | (written & unknown):
        assert stack.wait(job_id, timeout=120)["status"] == "succeeded"
    for job_id in accepted:
        assert stack.counter("runs", job_id) == 1


def test_a_poison_input_fails_its_own_job_only(make_stack, celery_app):
    stack = make_stack(analyzers="tests.fixtures.batching:Batcher")
    store = JobStore(stack.redis, result_ttl=600, tombstone_ttl=600, input_ttl=600)
    child = stack.live_workers()[0]["pid"]
    os.kill(child, signal.SIGSTOP)  # a moment, so that every job below waits in the queue together
    try:
        good = [stack.submit("batcher", input={"n": n})["id"] for n in range(4)]
        # Deeper than the API takes (it answers 400), as a client of an older API or a direct writer could
        # leave it: one tenant's input, and another's params.
        deep_input = submit_job(store, celery_app, analyzer="batcher", input_bytes=("[" * 950 + "]" * 950).encode(),
                                input_media_type="application/json", params={}, tenant="mallory").job_id
        deep_params = submit_job(store, celery_app, analyzer="batcher", input_bytes=b"{}",
                                 input_media_type="application/json", params={"x": _nested(500)},
                                 tenant="mallory").job_id
        rejected = stack.submit("batcher", input={"bad": True})["id"]  # the analyzer's decoder refuses it
        good += [stack.submit("batcher", input={"n": n})["id"] for n in range(4, 8)]
    finally:
        os.kill(child, signal.SIGCONT)
    ended = {job_id: stack.wait(job_id, timeout=60) for job_id in [*good, rejected]}
    for job_id in (deep_input, deep_params):  # another tenant's: its records are read from Redis
        record = wait_until(lambda i=job_id: (r := store.get(i)).is_terminal and r, 60, "the poison job to end")
        assert record.status == "failed" and record.error["code"] == "invalid_input", record
        assert record.attempts == 1
    assert ended[rejected]["status"] == "failed" and ended[rejected]["error"]["code"] == "analyzer_error"
    for job_id in good:
        assert ended[job_id]["status"] == "succeeded", ended[job_id]
    assert all(job["attempts"] == 1 for job in ended.values()), {i: j["attempts"] for i, j in ended.items()}
    assert max(ended[job_id]["timings"]["batch_size"] for job_id in good) >= 2  # they did share batches


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value
