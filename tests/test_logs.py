"""Log lines: JSON or text, and the job id on every line about a job."""

from __future__ import annotations

import json
import logging

import pytest

from tasks import logs

JOB = "3f0c2a9e-1111-4222-8333-944455556666"


def _record(msg: str, args=None, name: str = "test") -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    logs.JobIdFilter().filter(record)
    return record


def test_job_id_from_the_context_of_a_run():
    assert _record("outside").job_id is None
    with logs.job_context(JOB):
        assert _record("progress update lost").job_id == JOB
    assert _record("after").job_id is None


def test_job_id_from_celery_task_lines_and_gunicorn_access_lines():
    celery_line = _record("Task %(name)s[%(id)s] succeeded", {"name": "gpuq.run:digits", "id": JOB})
    assert celery_line.job_id == JOB
    get = _record("%(r)s", {"r": f"GET /v1/jobs/{JOB}?wait=30 HTTP/1.1", "U": f"/v1/jobs/{JOB}"})
    assert get.job_id == JOB
    post = _record("%(r)s", {"r": "POST /v1/jobs HTTP/1.1", "U": "/v1/jobs", "{location}o": f"/v1/jobs/{JOB}"})
    assert post.job_id == JOB
    assert _record("%(r)s", {"r": "GET /readyz HTTP/1.1", "U": "/readyz"}).job_id is None


def test_json_lines_carry_level_logger_message_job_and_worker():
    formatter = logs.JsonFormatter(worker="gpu0@host")
    with logs.job_context(JOB):
        entry = json.loads(formatter.format(_record("job %s done", (JOB,), name="gpuq.runner")))
    assert entry["job_id"] == JOB and entry["worker"] == "gpu0@host"
    assert entry["level"] == "INFO" and entry["logger"] == "gpuq.runner" and entry["message"] == f"job {JOB} done"
    assert entry["ts"].endswith("Z")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, __import__("sys").exc_info())
    line = formatter.format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_text_lines_name_the_job_once():
    formatter = logs.TextFormatter()
    with logs.job_context(JOB):
        assert formatter.format(_record("analyzer raised")).endswith(f"analyzer raised [job {JOB}]")
        assert formatter.format(_record("job %s failed", (JOB,))).count(JOB) == 1


def test_an_unknown_format_is_refused():
    assert logs.log_format({}) == "text"
    assert logs.log_format({"GPUQ_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(RuntimeError, match="GPUQ_LOG_FORMAT"):
        logs.log_format({"GPUQ_LOG_FORMAT": "xml"})
