"""Soak: a steady stream of jobs while a fault strikes every minute.

Starts its own Redis (AOF), two CPU workers (one of them reaching Redis
through a TCP proxy the soak controls) and the API, submits jobs of the
counting fault analyzer at a steady rate for the given time, and every
``--fault-every`` seconds, in turn: SIGKILLs a worker's main process; pauses
(SIGSTOP) a worker's model process, then its whole process tree, past the
heartbeat TTL; cuts the proxied worker off from Redis past the TTL; pauses
Redis itself for longer than the API's Redis timeout. Then it drains and
reports, each of which must be 0: jobs lost (accepted, never ended), jobs
written by two runners (two ends, or two results, announced for one job),
terminal answers that changed (a job read again 20 s after it ended, and
again after the drain, differs from its first terminal answer), and 5xx answers whose job was written (a job in
Redis that was answered neither 202 nor 503 ``outcome_unknown``); also the API
workers' memory growth and Redis memory once the result TTLs have passed.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 4] [--fault-every 60] [--faults kill,pause,...]
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

from tasks import keys  # noqa: E402
from tests.stack import Stack, parent_pid, start_workers, wait_for_workers  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

RESULT_TTL = 60
FAULTS = ("kill", "pause", "pause-tree", "cut", "redis-pause")
TERMINAL = ("succeeded", "failed", "canceled")
#: Seconds a pause or a cut lasts: past the soak stack's heartbeat TTL (3 s) and the janitor's wait after it.
OUTAGE = 9.0
#: Seconds Redis is paused: past the API's Redis timeout (2 s).
REDIS_OUTAGE = 4.0
#: Seconds after a job's first terminal answer that it is read again: past an outage, within the result TTL.
RECHECK_AFTER = 20.0


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
    parser.add_argument("--seconds", type=float, default=0.4,
                        help="run time of each job (the two workers are busy 80 % of the time at 4 jobs/s)")
    parser.add_argument("--fault-every", type=float, default=60)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"which, in turn (of {', '.join(FAULTS)})")
    parser.add_argument("--drain", type=float, default=300, help="seconds to wait for the last jobs")
    parser.add_argument("--result-ttl", type=int, default=RESULT_TTL,
                        help="seconds results live; Redis memory is read once they have expired")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown_faults = set(faults) - set(FAULTS)
    if unknown_faults:
        parser.error(f"unknown faults {sorted(unknown_faults)}")

    work = Path(tempfile.mkdtemp(prefix="gpuq-soak-"))
    stack = Stack(work, GPUQ_RESULT_TTL=str(args.result_ttl), GPUQ_TOMBSTONE_TTL="5",
                  GPUQ_INPUT_TTL="600").start(workers=1)
    proxy = TcpProxy(stack.redis_server.port)
    proxied = start_workers({**stack.env, "GPUQ_REDIS_URL": proxy.url, "GPUQ_HOSTNAME": "proxied",
                             "GPUQ_CPU_WORKERS": "1"}, work, name="proxied")
    events = stack.redis.pubsub(ignore_subscribe_messages=True)
    try:
        wait_for_workers(stack.redis_server.url, {"faulty"}, proxied, count=2)
        redis_before = stack.redis.info("memory")["used_memory"]
        session = requests.Session()
        for _ in range(20):  # warm the API up before taking its memory
            session.get(f"{stack.url}/v1/analyzers", timeout=5)
        api_before = {pid: rss_mb(pid) for pid in api_worker_pids(stack)}
        ids: list[str] = []
        refused = Counter()
        unknown_outcome: set[str] = set()
        struck = Counter()
        stop = threading.Event()
        first_answer: dict[str, dict] = {}  # job id -> its first terminal answer
        changed: set[str] = set()  # jobs whose terminal answer read differently later
        ends, results = Counter(), Counter()  # announced ends and stored results, per job

        # Every accepted end of a job is announced on its events channel, every stored result on its
        # result key's channel (tasks/lua/finish.lua): two of either for one job is two runners writing.
        events.psubscribe(keys.job_events("*"), "celery-task-meta-*")

        def listen() -> None:
            while not stop.is_set() or not drained.is_set():
                message = events.get_message(timeout=0.5)
                if message is None or message["type"] != "pmessage":
                    continue
                channel = message["channel"].decode()
                if channel.startswith("celery-task-meta-"):
                    results[channel.removeprefix("celery-task-meta-")] += 1
                elif message["data"].decode() in TERMINAL:
                    ends[channel.removeprefix(keys.job_events(""))] += 1

        def strike(fault: str) -> str:
            live = {w["name"]: w["pid"] for w in stack.live_workers()}
            if fault == "redis-pause":
                pid = stack.redis_server.process.pid
                os.kill(pid, signal.SIGSTOP)
                time.sleep(REDIS_OUTAGE)
                os.kill(pid, signal.SIGCONT)
                return f"paused Redis {REDIS_OUTAGE:g} s"
            if fault == "cut":
                proxy.cut()
                time.sleep(OUTAGE)
                proxy.restore()
                return f"cut the proxied worker off from Redis for {OUTAGE:g} s"
            # A heartbeat outlives its worker by up to its TTL: strike only processes still there.
            targets = [(name, child, main) for name, child in sorted(live.items())
                       if (main := _celery_main(child)) is not None]
            if not targets:
                return "no live worker to strike"
            name, child, main = targets[sum(struck.values()) % len(targets)]
            if fault == "kill":
                os.kill(main, signal.SIGKILL)
                return f"killed worker {name} (pid {main})"
            victims = [child, main] if fault == "pause-tree" else [child]
            for pid in victims:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(OUTAGE)
            for pid in reversed(victims):
                os.kill(pid, signal.SIGCONT)
            return f"paused {'the whole of' if fault == 'pause-tree' else 'the model process of'} {name} " \
                   f"for {OUTAGE:g} s"

        def striker() -> None:
            turn = 0
            while not stop.wait(args.fault_every):
                fault = faults[turn % len(faults)]
                turn += 1
                print(f"  {strike(fault)}", flush=True)
                struck[fault] += 1

        def read_again(watcher: requests.Session, job_id: str) -> None:
            """A job read again after it ended: a stale run's late write would show here. An expired
            result (410) is the documented end of an answer, not a change."""
            response = watcher.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10)
            if response.status_code == 200 and _answer(response.json()) != first_answer[job_id]:
                changed.add(job_id)

        def watch(until: threading.Event) -> None:
            watcher = requests.Session()
            recheck: dict[str, float] = {}  # job id -> when to read it again
            while True:
                finished_pass = until.is_set()
                for job_id in [j for j in list(ids) if j not in first_answer]:
                    try:
                        job = watcher.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()
                    except requests.RequestException:
                        continue  # Redis paused: look again
                    if job.get("status") in TERMINAL:
                        first_answer[job_id] = _answer(job)
                        recheck[job_id] = time.monotonic() + RECHECK_AFTER
                for job_id in [j for j, due in recheck.items() if due <= time.monotonic() or finished_pass]:
                    try:
                        read_again(watcher, job_id)
                    except requests.RequestException:
                        continue
                    del recheck[job_id]
                if finished_pass:
                    return
                time.sleep(0.5)

        drained = threading.Event()
        threads = [threading.Thread(target=watch, args=(drained,), daemon=True),
                   threading.Thread(target=listen, daemon=True), threading.Thread(target=striker, daemon=True)]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        next_at = began
        while time.monotonic() - began < args.minutes * 60:
            try:
                response = session.post(f"{stack.url}/v1/jobs", json={
                    "analyzer": "faulty", "params": {"seconds": args.seconds}}, timeout=30)
            except requests.RequestException as error:
                refused[type(error).__name__] += 1
            else:
                if response.status_code == 202:
                    ids.append(response.json()["id"])
                else:
                    refused[response.status_code] += 1
                    error = response.json().get("error", {})
                    if error.get("code") == "outcome_unknown":
                        unknown_outcome.add(error["id"])
            next_at += 1 / args.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        stop.set()
        print(f"submitted for {args.minutes:g} min; draining {len(ids) - len(first_answer)} of {len(ids)} jobs",
              flush=True)
        deadline = time.monotonic() + args.drain
        while len(first_answer) < len(ids) and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(2)  # a stale run's late end, if any were accepted, is announced by now
        drained.set()
        for thread in threads[:2]:
            thread.join()
        pending = [j for j in ids if j not in first_answer]
        if pending:
            left_statuses = Counter(session.get(f"{stack.url}/v1/jobs/{j}", timeout=5).json().get("status")
                                    for j in pending)
            print(f"not finished: {dict(left_statuses)}; queue {stack.redis.llen('gpuq.faulty')}, "
                  f"unacked {stack.redis.hlen('unacked')}; workers {[w['name'] for w in stack.live_workers()]}")
        for job_id in list(first_answer):  # and once more, all of them, while their results live
            read_again(session, job_id)
        two_writers = sorted({j for j, n in ends.items() if n > 1} | {j for j, n in results.items() if n > 1})
        written = {k.decode().removeprefix(keys.job("")) for k in stack.redis.scan_iter(keys.job("*"))}
        ran_after_5xx = written - set(ids) - unknown_outcome
        statuses = Counter(answer["status"] for answer in first_answer.values())
        api_after = {pid: rss_mb(pid) for pid in api_worker_pids(stack)}
        for key in stack.redis.scan_iter("test:*"):  # the bench's own counters
            stack.redis.delete(key)
        time.sleep(args.result_ttl + 10)
        redis_after = stack.redis.info("memory")["used_memory"]
        left = sum(1 for _ in stack.redis.scan_iter("gpuq:job:*"))
        kinds = Counter(":".join(k.decode().split(":")[:2]) for k in stack.redis.scan_iter("*"))

        print(f"accepted {len(ids)}  refused {dict(refused)}  outcome unknown {len(unknown_outcome)}  "
              f"faults {dict(struck)}")
        print(f"succeeded {statuses['succeeded']}  failed {statuses['failed']}  canceled {statuses['canceled']}")
        print(f"lost {len(pending)}  written by two runners {len(two_writers)}  changed answers {len(changed)}  "
              f"5xx whose job ran {len(ran_after_5xx)}")
        for what, jobs in (("two runners", two_writers), ("changed", sorted(changed)),
                           ("5xx ran", sorted(ran_after_5xx))):
            if jobs:
                print(f"  {what}: {jobs[:5]}")
        growth = {pid: round(api_after.get(pid, 0) - mb, 1) for pid, mb in api_before.items()}
        print(f"API worker RSS before {[round(v, 1) for v in api_before.values()]} MB, growth {growth} MB")
        print(f"Redis used_memory before {redis_before / 1e6:.2f} MB, after TTLs {redis_after / 1e6:.2f} MB "
              f"(ratio {redis_after / redis_before:.2f}); job records left {left}")
        print(f"keys left by kind: {dict(sorted(kinds.items()))}")
        return 0 if not (pending or two_writers or changed or ran_after_5xx) else 1
    finally:
        proxied.stop(timeout=30)
        events.close()
        proxy.close()
        stack.stop()


def _answer(job: dict) -> dict:
    """What a client was told of an ended job: none of it may change."""
    return {k: job.get(k) for k in ("status", "result", "error", "finished_at", "worker", "attempts")}


if __name__ == "__main__":
    sys.exit(main())
