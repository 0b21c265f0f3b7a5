"""Soak: a steady stream of jobs while a worker is killed every minute.

Starts its own Redis (AOF), two CPU workers under the launcher and the API,
submits jobs of the counting fault analyzer at a steady rate for the given
time, SIGKILLs one worker's main process every ``--kill-every`` seconds, then
drains and reports: jobs accepted, succeeded, failed, lost (must be 0),
duplicated runs (a job finished twice, or two runs at once), the API
workers' memory growth, and Redis memory once the result TTLs have passed.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 4] [--kill-every 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.stack import Stack, parent_pid  # noqa: E402

RESULT_TTL = 60


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _celery_main(child_pid: int) -> int | None:
    """The Celery main process above a pool child, if both still run."""
    try:
        main = parent_pid(child_pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return main if main > 1 else None


def api_worker_pids(stack: Stack) -> list[int]:
    pid = stack.api_process.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _exit_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)  # so the stack below is stopped, not left running


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=4, help="jobs submitted per second")
    parser.add_argument("--seconds", type=float, default=0.2, help="run time of each job")
    parser.add_argument("--kill-every", type=float, default=60)
    parser.add_argument("--drain", type=float, default=300, help="seconds to wait for the last jobs")
    args = parser.parse_args()

    stack = Stack(Path(tempfile.mkdtemp(prefix="gpuq-soak-")), GPUQ_RESULT_TTL=str(RESULT_TTL),
                  GPUQ_TOMBSTONE_TTL="5", GPUQ_INPUT_TTL="600").start(workers=2)
    try:
        redis_before = stack.redis.info("memory")["used_memory"]
        session = requests.Session()
        for _ in range(20):  # warm the API up before taking its memory
            session.get(f"{stack.url}/v1/analyzers", timeout=5)
        api_before = {pid: rss_mb(pid) for pid in api_worker_pids(stack)}
        ids: list[str] = []
        refused = Counter()
        kills = 0
        stop = threading.Event()
        outcome: dict[str, str] = {}  # job id -> terminal status, observed before its result expires
        duplicates = 0

        def killer() -> None:
            nonlocal kills
            while not stop.wait(args.kill_every):
                # A heartbeat outlives its worker by up to its TTL: kill only a
                # Celery main process that is still there.
                mains = [(w["name"], main) for w in stack.live_workers()
                         if (main := _celery_main(w["pid"])) is not None]
                if mains:
                    name, main = mains[kills % len(mains)]
                    os.kill(main, signal.SIGKILL)
                    kills += 1
                    print(f"  killed worker {name} (pid {main})", flush=True)

        def watch(until: threading.Event) -> None:
            nonlocal duplicates
            watcher = requests.Session()
            while True:
                finished_pass = until.is_set()
                for job_id in [j for j in list(ids) if j not in outcome]:
                    job = watcher.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()
                    if job.get("status") in ("succeeded", "failed", "canceled"):
                        outcome[job_id] = job["status"]
                        done = int(stack.redis.get(f"test:done:{job_id}") or 0)
                        most = int(stack.redis.get(f"test:maxactive:{job_id}") or 0)
                        duplicates += done > 1 or most > 1
                if finished_pass:
                    return
                time.sleep(0.5)

        drained = threading.Event()
        watcher_thread = threading.Thread(target=watch, args=(drained,), daemon=True)
        watcher_thread.start()
        threading.Thread(target=killer, daemon=True).start()
        began = time.monotonic()
        next_at = began
        while time.monotonic() - began < args.minutes * 60:
            response = session.post(f"{stack.url}/v1/jobs", json={"analyzer": "faulty",
                                                                    "params": {"seconds": args.seconds}}, timeout=10)
            if response.status_code == 202:
                ids.append(response.json()["id"])
            else:
                refused[response.status_code] += 1
            next_at += 1 / args.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        stop.set()
        print(f"submitted for {args.minutes:g} min; draining {len(ids) - len(outcome)} of {len(ids)} jobs",
              flush=True)
        deadline = time.monotonic() + args.drain
        while len(outcome) < len(ids) and time.monotonic() < deadline:
            time.sleep(1)
        drained.set()
        watcher_thread.join()
        statuses = Counter(outcome.values())
        pending = [j for j in ids if j not in outcome]
        if pending:
            left_statuses = Counter(session.get(f"{stack.url}/v1/jobs/{j}", timeout=5).json().get("status")
                                    for j in pending)
            print(f"not finished: {dict(left_statuses)}; queue {stack.redis.llen('gpuq.faulty')}, "
                  f"unacked {stack.redis.hlen('unacked')}; workers {[w['name'] for w in stack.live_workers()]}")
        api_after = {pid: rss_mb(pid) for pid in api_worker_pids(stack)}
        for key in stack.redis.scan_iter("test:*"):  # the bench's own counters
            stack.redis.delete(key)
        time.sleep(RESULT_TTL + 10)
        redis_after = stack.redis.info("memory")["used_memory"]
        left = sum(1 for _ in stack.redis.scan_iter("gpuq:job:*"))
        kinds = Counter(":".join(k.decode().split(":")[:2]) for k in stack.redis.scan_iter("*"))

        print(f"accepted {len(ids)}  refused {dict(refused)}  workers killed {kills}")
        print(f"succeeded {statuses['succeeded']}  failed {statuses['failed']}  lost {len(pending)}  "
              f"duplicated runs {duplicates}")
        growth = {pid: round(api_after.get(pid, 0) - mb, 1) for pid, mb in api_before.items()}
        print(f"API worker RSS before {[round(v, 1) for v in api_before.values()]} MB, growth {growth} MB")
        print(f"Redis used_memory before {redis_before / 1e6:.2f} MB, after TTLs {redis_after / 1e6:.2f} MB "
              f"(ratio {redis_after / redis_before:.2f}); job records left {left}")
        print(f"keys left by kind: {dict(sorted(kinds.items()))}")
        return 0 if not pending and not duplicates else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
