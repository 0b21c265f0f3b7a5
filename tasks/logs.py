"""Log lines of gpuq's processes: text by default, one JSON object a line with ``GPUQ_LOG_FORMAT=json``.

Every line about a job carries its id (``job_id``): lines written while a
worker runs a job get it from a context variable set around the run; Celery's
own task lines ("received", "succeeded", "raised") and gunicorn's access lines
get it from their arguments. The API, the worker launcher and the Celery
workers all configure their logging here, so the shape is the same in each.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from typing import Any

__all__ = ["FORMATS", "JobIdFilter", "JsonFormatter", "TextFormatter", "bind_job", "configure", "connect_celery",
           "gunicorn_logconfig", "job_context", "log_format", "unbind_job"]

FORMATS = ("text", "json")

_job_id: ContextVar[str | None] = ContextVar("gpuq_job_id", default=None)
_JOB_PATH = re.compile(r"/v1/jobs/([0-9a-fA-F-]{8,64})")
_TEXT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every line logged inside (in this thread or task) carries ``job_id``."""
    token = bind_job(job_id)
    try:
        yield
    finally:
        unbind_job(token)


def bind_job(job_id: str) -> Token:
    """``job_context`` in two halves, for request hooks that begin and end apart."""
    return _job_id.set(job_id)


def unbind_job(token: Token) -> None:
    _job_id.reset(token)


def _job_id_from_args(args: Any) -> str | None:
    if not isinstance(args, Mapping):
        return None
    # Celery's trace and strategy lines: "Task %(name)s[%(id)s] succeeded in ...".
    if "id" in args and "name" in args:
        return str(args["id"])
    # gunicorn's access lines: the path of a job, or the Location of a new one.
    for atom in ("U", "{location}o"):
        match = _JOB_PATH.search(str(args.get(atom) or ""))
        if match:
            return match.group(1)
    return None


class JobIdFilter(logging.Filter):
    """Sets ``record.job_id`` (``None`` when the line is about no job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job_id", None):
            record.job_id = _job_id.get() or _job_id_from_args(record.args)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the job and worker when known."""

    def __init__(self, worker: str | None = None):
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if self.worker:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual text line, with ``[job <id>]`` added when the message does not already name it."""

    def __init__(self, fmt: str = _TEXT):
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id = getattr(record, "job_id", None)
        if job_id and job_id not in record.getMessage():
            first, newline, rest = line.partition("\n")
            line = f"{first} [job {job_id}]{newline}{rest}"
        return line


def log_format(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    value = (env.get("GPUQ_LOG_FORMAT") or "text").strip().lower()
    if value not in FORMATS:
        raise RuntimeError(f"GPUQ_LOG_FORMAT={value!r}: expected one of {FORMATS}")
    return value


def _formatter(environ: Mapping[str, str] | None = None) -> logging.Formatter:
    env = os.environ if environ is None else environ
    if log_format(env) == "json":
        return JsonFormatter(worker=env.get("GPUQ_WORKER_NAME") or None)
    return TextFormatter()


def configure(level: str | int = "INFO", environ: Mapping[str, str] | None = None) -> None:
    """Send the root logger's lines to stderr in the chosen format (replacing its handlers)."""
    handler = logging.StreamHandler(sys.stderr)  # bound now: Celery later swaps sys.stderr for a proxy
    handler.setFormatter(_formatter(environ))
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings become log lines too, in the same format


def connect_celery() -> None:
    """Make Celery's worker use ``configure`` instead of its own logging set-up.

    A receiver of ``setup_logging`` replaces Celery's set-up entirely, so the
    worker's own lines (received, succeeded, raised) come out in the same
    format, with their job id.
    """
    from celery import signals

    def _setup(loglevel=None, **_):
        configure(loglevel or "INFO")

    signals.setup_logging.connect(_setup, weak=False, dispatch_uid="gpuq.logs")
    # Celery warns of a few things before it sets logging up (running as root,
    # say). In a process with no logging yet (a celery command, not gunicorn),
    # JSON starts now, so that those are JSON lines like the rest.
    if log_format() == "json" and not logging.getLogger().handlers:
        configure()


def gunicorn_logconfig(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error and access lines, and the app's, in the chosen format."""
    formatter = {"()": JsonFormatter} if log_format(environ) == "json" else {"()": TextFormatter}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"job_id": {"()": JobIdFilter}},
        "formatters": {"gpuq": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "gpuq", "filters": ["job_id"],
                       "stream": "ext://sys.stderr"},
            "stdout": {"class": "logging.StreamHandler", "formatter": "gpuq", "filters": ["job_id"],
                       "stream": "ext://sys.stdout"},
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }
