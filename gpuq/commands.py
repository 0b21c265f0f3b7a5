"""The client side of the ``gpuq`` command: submit, status, wait, cancel, analyzers, batch.

Human output by default, ``--json`` for scripts; progress bars go to stderr.
Exit codes (``EXIT_*``) let scripts tell a failed job from a refused request
from an API that cannot be reached. A refused connection is not retried before the
API is first reached: nothing listens there, and a person is better told so at once
than after 16 s of backoff. Once it has been, a refusal is the API restarting,
and retried (each retry said on stderr), so a long wait or batch outlives it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuq.client import REJECTED, Client
from gpuq.client_errors import ApiError, ConnectionFailed, GpuqError, OutcomeUnknown, Unavailable, WaitTimeout
from gpuq.job_text import job_lines
from gpuq.progress_bar import ProgressBar

__all__ = ["COMMANDS", "EXIT_API_ERROR", "EXIT_CANCELED", "EXIT_FAILED", "EXIT_OK", "EXIT_TIMEOUT",
           "EXIT_UNREACHABLE", "register", "run"]

EXIT_OK = 0           # done; the job (every job of a batch) succeeded
EXIT_FAILED = 1       # the job failed (a batch: at least one did)
EXIT_USAGE = 2        # bad arguments (argparse's own)
EXIT_CANCELED = 3     # the job was canceled
EXIT_TIMEOUT = 4      # --timeout passed before the job ended; it goes on
EXIT_API_ERROR = 5    # the API refused the request (4xx: unknown job, invalid field, ...)
EXIT_UNREACHABLE = 6  # the API could not be reached, or stayed unavailable (5xx)

COMMANDS = ("submit", "status", "wait", "cancel", "analyzers", "batch")


def register(commands: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("GPUQ_URL", "http://127.0.0.1:8000"),
                        help="the API's address (default: GPUQ_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", default=os.environ.get("GPUQ_API_KEY"), help="API key (default: GPUQ_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")

    submit = commands.add_parser("submit", parents=[common], help="submit a job (a file, or --input JSON)")
    submit.add_argument("analyzer")
    submit.add_argument("file", nargs="?", type=Path, help="the file to analyze (omit with --input)")
    submit.add_argument("--input", help="a JSON input instead of a file")
    submit.add_argument("--params", help="params as a JSON object")
    submit.add_argument("--webhook", help="URL told of the job's start, progress and end")
    submit.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
    submit.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")

    for name, text in (("status", "show a job"), ("wait", "wait for a job, with a progress bar"),
                       ("cancel", "cancel a job")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("id")
        if name == "wait":
            sub.add_argument("--timeout", type=float, help="give up after this many seconds")

    commands.add_parser("analyzers", parents=[common], help="list the analyzers the fleet serves")

    batch = commands.add_parser("batch", parents=[common],
                                help="submit every file of a folder; results as JSON lines")
    batch.add_argument("analyzer")
    batch.add_argument("dir", type=Path)
    batch.add_argument("--out", type=Path, help="write the JSON lines here (default: stdout)")
    batch.add_argument("--params", help="params as a JSON object, for every job")
    batch.add_argument("--concurrency", type=int, default=8, help="jobs in flight at once (default 8)")
    batch.add_argument("--timeout", type=float, help="give up on a job after this many seconds")


def run(args: argparse.Namespace) -> int:
    client = Client(args.url, api_key=args.api_key, retry_refused=False, on_retry=_retry_notice(args.url))
    try:
        return _COMMANDS[args.command](client, args)
    except WaitTimeout as error:
        _say(f"gpuq: {error}")
        if args.json and error.job is not None:
            _print_json(error.job.raw)
        return EXIT_TIMEOUT
    except OutcomeUnknown as error:
        _say(f"gpuq: the API could not tell whether job {error.job_id} was accepted: {error}; "
             f"see `gpuq status {error.job_id}` later")
        if args.json:
            _print_json({"error": {"code": error.code, "message": str(error), "id": error.job_id,
                                   "status": error.status}})
        return EXIT_UNREACHABLE
    except (ConnectionFailed, Unavailable) as error:
        _say(_trouble(error, args.url))
        return EXIT_UNREACHABLE
    except ApiError as error:
        _say(f"gpuq: {error.status} {error.code}" + (f" ({error.field})" if error.field else "") + f": {error}")
        if args.json:
            _print_json({"error": {"code": error.code, "message": str(error), "field": error.field,
                                   "status": error.status}})
        return EXIT_UNREACHABLE if error.status >= 500 else EXIT_API_ERROR
    except (GpuqError, ValueError, OSError) as error:
        _say(f"gpuq: {error}")
        return EXIT_USAGE


def _submit(client: Client, args: argparse.Namespace) -> int:
    params = _json_arg(args.params, "--params")
    if (args.file is None) == (args.input is None):
        raise ValueError("give a FILE or --input JSON (one of them)")
    if args.file is not None:
        job = client.submit(args.analyzer, file=args.file, params=params, webhook=args.webhook)
    else:
        job = client.submit(args.analyzer, input=_json_arg(args.input, "--input"), params=params,
                            webhook=args.webhook)
    if args.wait:
        if not args.json:
            _say(f"submitted {job.id}")
        return _wait_and_show(client, job.id, args)
    if args.json:
        _print_json(job.raw)
    else:
        print(job.id)
        _say(f"submitted {job.id} ({job.status}); follow it with: gpuq wait {job.id}")
    return EXIT_OK


def _status(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.id)
    if args.json:
        _print_json(job.raw)
    else:
        print("\n".join(job_lines(job)))
    return EXIT_OK


def _wait(client: Client, args: argparse.Namespace) -> int:
    return _wait_and_show(client, args.id, args)


def _cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.id)
    if args.json:
        _print_json(job.raw)
    else:
        print(f"{job.id} {job.status}")
    return EXIT_OK


def _analyzers(client: Client, args: argparse.Namespace) -> int:
    analyzers = client.analyzers()
    if args.json:
        _print_json(analyzers)
        return EXIT_OK
    for a in analyzers:
        workers = ", ".join(f"{w.get('name', '?')} ({w.get('device')}, {w.get('state')})" if isinstance(w, dict)
                            else str(w) for w in a.get("workers", []))
        print(f"{a['name']:<16} {workers or 'no worker'}")
        if a.get("description"):
            print(f"{'':<16} {a['description']}")
    return EXIT_OK


def _batch(client: Client, args: argparse.Namespace) -> int:
    params = _json_arg(args.params, "--params")
    if not args.dir.is_dir():
        raise ValueError(f"{args.dir} is not a folder")
    files = sorted(p for p in args.dir.iterdir() if p.is_file() and not p.name.startswith("."))
    out = args.out.open("w") if args.out else sys.stdout
    bar = ProgressBar(f"{args.analyzer} 0/{len(files)}")
    counts = dict.fromkeys(("succeeded", "failed", REJECTED, "canceled"), 0)
    unsuccessful: list[str] = []
    try:
        for done, (index, job) in enumerate(client.map(args.analyzer, files, concurrency=args.concurrency,
                                                        params=params, timeout=args.timeout), start=1):
            counts[job.status] = counts.get(job.status, 0) + 1
            out.write(json.dumps({"file": files[index].name, "id": job.id, "status": job.status,
                                  "result": job.result, "error": job.error}) + "\n")
            out.flush()
            if not job.succeeded:
                error = job.error or {}
                unsuccessful.append(f"  {files[index].name}: {job.status}"
                                    + (f", {error.get('code')}: {error.get('message')}" if error else ""))
            bar.label = f"{args.analyzer} {done}/{len(files)}"
            bar.update(done / len(files) if files else 1.0, f"{len(unsuccessful)} not succeeded" if unsuccessful
                       else "")
    finally:
        bar.close()
        if args.out:
            out.close()
    _say(f"{len(files)} files: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    for line in unsuccessful:
        _say(line)
    return EXIT_OK if counts["succeeded"] == len(files) else EXIT_FAILED


def _wait_and_show(client: Client, job_id: str, args: argparse.Namespace) -> int:
    timeout = getattr(args, "timeout", None)
    bar = None if args.json else ProgressBar(job_id[:8])
    stop = threading.Event()
    if bar is not None:
        # The bar follows the event stream on its own thread; the long-poll here decides
        # when waiting is over (the job ended, or --timeout passed), whatever the stream does.
        threading.Thread(target=_follow, args=(client, job_id, bar, stop), daemon=True).start()
    job = None
    try:
        job = client.wait(job_id, timeout=timeout)
    finally:
        if bar is not None:
            with bar.lock:
                stop.set()
                if job is not None:  # the end, drawn whether or not the stream got there first
                    bar.update(1.0 if job.succeeded else job.fraction, job.status)
                bar.close()
        stop.set()
    if args.json:
        _print_json(job.raw)
    else:
        print("\n".join(job_lines(job)))
    return {"succeeded": EXIT_OK, "canceled": EXIT_CANCELED}.get(job.status, EXIT_FAILED)


def _follow(client: Client, job_id: str, bar: ProgressBar, stop: threading.Event) -> None:
    """Feed the bar from the job's event stream until the job ends (or streams are refused)."""
    try:
        for event in client.events(job_id):
            job = event.job
            if job is None:
                return
            progress = job.progress or {}
            note = job.status if job.status != "running" else progress.get("stage") or "running"
            if job.status == "queued" and job.queue_position is not None:
                note = f"queued, {job.queue_position} ahead"
            if "done" in progress and "total" in progress and job.status == "running":
                note += f" {progress['done']}/{progress['total']}"
            with bar.lock:
                if stop.is_set():
                    return
                bar.update(job.fraction if job.status != "queued" else 0.0, note)
    except GpuqError:
        return  # no stream (too many open, say): the long-poll still waits for the end


def _json_arg(raw: str | None, name: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ValueError(f"{name} is not valid JSON") from None


def _print_json(value: Any) -> None:
    print(json.dumps(value))


def _retry_notice(url: str) -> Callable[[GpuqError, float], None]:
    def notice(error: GpuqError, seconds: float) -> None:
        # A full queue (429) goes unsaid: it is a batch's everyday back-pressure, not trouble.
        if isinstance(error, (ConnectionFailed, Unavailable)):
            _say(f"{_trouble(error, url)}; trying again in {seconds:.1f}s")
    return notice


def _trouble(error: ConnectionFailed | Unavailable, url: str) -> str:
    """One line on an API that cannot be used: ``ConnectionFailed`` names its URL already."""
    if isinstance(error, ConnectionFailed) and error.refused:
        return (f"gpuq: {error}; is it running there? "
                "(`make up` serves http://127.0.0.1:8000; --url or GPUQ_URL names another)")
    if isinstance(error, ConnectionFailed):
        return f"gpuq: {error}"
    return f"gpuq: the API at {url} is unavailable ({error.status} {error.code}): {error}"


def _say(text: str) -> None:
    # On a terminal, first clear a progress bar drawn on this line; it is drawn again below at its next step.
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""
    print(clear + text, file=sys.stderr, flush=True)


_COMMANDS = {"submit": _submit, "status": _status, "wait": _wait, "cancel": _cancel, "analyzers": _analyzers,
             "batch": _batch}
