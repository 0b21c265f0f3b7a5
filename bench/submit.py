"""Submit path throughput: POST /v1/jobs against the framework's own ceiling, in one run.

Starts its own Redis (loopback, free port) and the API under the production
gunicorn configuration (``gunicorn.conf.py``: its workers, threads and access
log), serving ``bench/ceiling_app.py``: the production app plus a no-op
route. Then wrk (``--connections`` clients, keep-alive) measures, in rounds
that interleave the phases so that a noisy neighbour hits all three alike:

  (a) ceiling: ``POST /bench/noop`` with the small JSON body, no work at all;
  (b) ``POST /v1/jobs``, a small JSON job (``simulate``);
  (c) ``POST /v1/jobs``, a multipart upload of a 100 KB PNG.

Every request carries an API key, as in production. No worker runs (one
draining the queue would take the CPU the API is measured on): the analyzers'
specs are published to the catalog by the same code a worker uses, and the
queue and tenant limits are set high enough that no submit is refused. Redis
is emptied between phases; after each submit phase the bench checks that
Redis holds at least as many queued jobs as wrk counted answers. Any non-2xx
answer or socket error fails the run.

Reported: requests/s and p50/p99 latency of each phase (the median of the
rounds), the ratios b/a and c/a, each API worker's resident memory after the
load (and its peak), and whether each target of the submit path is met.

``--breakdown`` adds two phases to each round, each half of a submit alone
(see ``bench/ceiling_app.py``): (p) parsing, validation, record, message and
answer without Redis; (r) one batched call of an empty Lua script. The load
keeps the machine's cores busy, so the machine time a request costs is the
inverse of the requests/s; the bench prints what each half adds to the
ceiling's cost, what the submit's own writes add (b less the ceiling and
both halves), and what b/a >= 0.75 allows in all.

    .venv/bin/python bench/submit.py [--duration 10] [--rounds 3] [--connections 32] [--threads 2]
                                     [--breakdown] [--json] [--check]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import redis as redis_lib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.auth import new_key  # noqa: E402
from bench.ceiling_app import NOOP_PATH, PARSE_ONLY_PATH, REDIS_ROUND_TRIP_PATH  # noqa: E402
from gpu_worker.analyzer import Analyzer  # noqa: E402
from gpu_worker.analyzers.simulate import SimulateAnalyzer  # noqa: E402
from gpu_worker.decoding import MEDIA_TYPES  # noqa: E402
from gpuq.redis_server import RedisServer, free_port  # noqa: E402
from tasks import catalog  # noqa: E402
from tasks.app import queue_for  # noqa: E402
from tests.stack import ROOT, Process, base_env, wait_until_serving  # noqa: E402

#: The submit path's targets: ratios to the ceiling, p99 of (b) in ms, worker memory in MB.
TARGET_B_RATIO = 0.75
TARGET_C_RATIO = 0.6
TARGET_B_P99_MS = 25.0
TARGET_WORKER_RSS_MB = 80.0

UPLOAD_BYTES = 100 * 1024
_NO_LIMIT = str(10**9)


class UploadAnalyzer(Analyzer):
    """digits' upload rules (the images and arrays it decodes) without its model.

    digits imports torch to run; the API only ever reads an analyzer's spec, so
    the bench publishes this one's and needs no torch.
    """

    name = "bench-upload"
    description = "Takes the uploads digits takes; never run."
    media_types = MEDIA_TYPES


ANALYZERS = (SimulateAnalyzer, UploadAnalyzer)

# wrk runs this in each of its threads; WRK_BODY_FILE, WRK_CONTENT_TYPE and
# WRK_AUTHORIZATION come from the environment. done() prints one JSON line.
_WRK_SCRIPT = """
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE")
wrk.headers["Authorization"] = os.getenv("WRK_AUTHORIZATION")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%f,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def noise_png(size: int) -> bytes:
    """A valid RGB PNG of random pixels, about ``size`` bytes (noise does not compress)."""
    side = math.ceil((size / 3) ** 0.5)
    rows = b"".join(b"\x00" + os.urandom(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 1))
            + chunk(b"IEND", b""))


def multipart(fields: dict[str, str], file_name: str, file_bytes: bytes) -> tuple[bytes, str]:
    boundary = "gpuq-bench-" + os.urandom(8).hex()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + file_bytes + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Phase:
    def __init__(self, label: str, title: str, path: str, body: bytes, content_type: str, work: Path,
                 queue: str | None):
        self.label, self.title, self.path, self.content_type, self.queue = label, title, path, content_type, queue
        self.body_file = work / f"body-{label}"
        self.body_file.write_bytes(body)
        self.runs: list[dict[str, Any]] = []


def publish_catalog(client: redis_lib.Redis) -> None:
    """What a worker publishes when its models are loaded (gpu_worker/runtime.py), for the API to accept jobs."""
    # No worker renews them here: published for a day, past any run of the benchmark.
    catalog.publish_analyzers(client, [cls.spec() for cls in ANALYZERS], ttl=86400)


def start_api(redis_url: str, api_key_entry: str, work: Path) -> tuple[Process, str]:
    port = free_port()
    env = base_env(redis_url, GPUQ_API_KEYS=api_key_entry, GPUQ_API_PORT=str(port), GPUQ_API_HOST="127.0.0.1",
                   GPUQ_QUEUE_LIMITS=",".join(f"{cls.name}={_NO_LIMIT}" for cls in ANALYZERS),
                   GPUQ_TENANT_MAX_QUEUED=_NO_LIMIT)
    # The production configuration as it is (workers, threads, access log): only the app differs.
    for name in ("GPUQ_API_WORKERS", "GPUQ_API_THREADS", "GPUQ_API_ACCESS_LOG"):
        env.pop(name, None)
    process = Process([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                       "bench.ceiling_app:create_app()"], env, work / "api.log")
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url)
    return process, url


def worker_pids(master: int) -> list[int]:
    return sorted(int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split())


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values["rss" if name == "VmRSS" else "peak"] = int(rest.split()[0]) / 1024
    return values


def run_wrk(phase: Phase, url: str, args: argparse.Namespace, script: Path, authorization: str,
            duration: float) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODY_FILE": str(phase.body_file), "WRK_CONTENT_TYPE": phase.content_type,
           "WRK_AUTHORIZATION": authorization}
    # wrk takes whole seconds only ("-d0.5s" is refused): a fraction is rounded up.
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, math.ceil(duration))}s",
               "--timeout", "10s",
               "--latency", "-s", str(script), url + phase.path]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in finished.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if finished.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({finished.returncode}):\n{finished.stdout}\n{finished.stderr}")
    result = json.loads(line.removeprefix("WRK_RESULT "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return result


def queued_jobs(client: redis_lib.Redis, analyzer: str) -> int:
    return int(client.llen(queue_for(analyzer)))


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(phases: list[Phase], memory: dict[int, dict[str, float]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"connections": args.connections, "wrk_threads": args.threads,
                           "duration_s": args.duration, "rounds": args.rounds, "phases": {}}
    for phase in phases:
        out["phases"][phase.label] = {
            "title": phase.title,
            "rps": median([r["rps"] for r in phase.runs]),
            "p50_ms": median([r["p50_us"] / 1000 for r in phase.runs]),
            "p99_ms": median([r["p99_us"] / 1000 for r in phase.runs]),
            "rounds_rps": [round(r["rps"], 1) for r in phase.runs],
        }
    by = out["phases"]
    out["ratio_b_a"] = by["b"]["rps"] / by["a"]["rps"]
    out["ratio_c_a"] = by["c"]["rps"] / by["a"]["rps"]
    if "p" in by and "r" in by:
        out["breakdown_us"] = breakdown(by)
    out["workers"] = {str(pid): m for pid, m in memory.items()}
    worst_rss = max(m["rss"] for m in memory.values())
    out["targets"] = {
        f"b/a >= {TARGET_B_RATIO}": out["ratio_b_a"] >= TARGET_B_RATIO,
        f"c/a >= {TARGET_C_RATIO}": out["ratio_c_a"] >= TARGET_C_RATIO,
        f"p99 of (b) <= {TARGET_B_P99_MS:g} ms": by["b"]["p99_ms"] <= TARGET_B_P99_MS,
        f"each API worker < {TARGET_WORKER_RSS_MB:g} MB resident": worst_rss < TARGET_WORKER_RSS_MB,
    }
    return out


def breakdown(by: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Machine time per request, in µs: what each half of a submit and its writes add to the ceiling's."""
    cost = {label: 1e6 / phase["rps"] for label, phase in by.items()}
    parse, round_trip = cost["p"] - cost["a"], cost["r"] - cost["a"]
    return {
        "ceiling": cost["a"],
        "parse_validate_render": parse,
        "redis_round_trip": round_trip,
        "submit_writes": cost["b"] - cost["a"] - parse - round_trip,
        "submit_total": cost["b"] - cost["a"],
        "allowed_by_target": cost["a"] / TARGET_B_RATIO - cost["a"],
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['connections']} concurrent connections (wrk, {result['wrk_threads']} threads, keep-alive); "
          f"{result['rounds']} rounds of {result['duration_s']:g} s, "
          f"phases interleaved {','.join(result['phases'])} per round; "
          f"each figure is the median of the rounds")
    print(f"{'phase':<52} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   req/s by round")
    for label, phase in result["phases"].items():
        print(f"({label}) {phase['title']:<48} {phase['rps']:>8.0f} {phase['p50_ms']:>8.2f} {phase['p99_ms']:>8.2f}"
              f"   {', '.join(f'{r:.0f}' for r in phase['rounds_rps'])}")
    print(f"\nb/a = {result['ratio_b_a']:.2f}   c/a = {result['ratio_c_a']:.2f}")
    if "breakdown_us" in result:
        us = result["breakdown_us"]
        print(f"\nmachine time per request (1 / req/s, every core busy): the ceiling {us['ceiling']:.0f} µs; "
              f"a small submit adds {us['submit_total']:.0f} µs:\n"
              f"  parse, validate, build, render (p - a)   {us['parse_validate_render']:>6.0f} µs\n"
              f"  waiting on Redis, empty script (r - a)    {us['redis_round_trip']:>6.0f} µs\n"
              f"  the submit's writes (the rest of b - a)   {us['submit_writes']:>6.0f} µs\n"
              f"  b/a >= {TARGET_B_RATIO} allows in all               {us['allowed_by_target']:>6.0f} µs")
    print("API workers' resident memory after the load (peak in brackets): " + ", ".join(
        f"pid {pid} {m['rss']:.1f} MB ({m['peak']:.1f} MB)" for pid, m in result["workers"].items()))
    print("\ntargets:")
    for name, met in result["targets"].items():
        print(f"  {'met    ' if met else 'NOT MET'}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds of each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of a, b, c; figures are their medians")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load per phase first")
    parser.add_argument("--breakdown", action="store_true",
                        help="also measure each half of a submit alone: (p) parse only, (r) Redis round trip only")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is not met")
    args = parser.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    work = Path(tempfile.mkdtemp(prefix="gpuq-bench-submit-"))
    # No AOF: the bench measures the API, not the disk (writes reach Redis alike either way).
    server = RedisServer(work / "redis", appendonly=False).start()
    client = redis_lib.Redis.from_url(server.url)
    key, entry = new_key("bench")
    authorization = f"Bearer {key}"
    script = work / "post.lua"
    script.write_text(_WRK_SCRIPT)
    small = json.dumps({"analyzer": SimulateAnalyzer.name, "input": {"text": "hello"},
                        "params": {"seconds": 1}}).encode()
    upload, upload_type = multipart({"analyzer": UploadAnalyzer.name}, "noise.png", noise_png(UPLOAD_BYTES))
    phases = [
        Phase("a", f"ceiling: POST {NOOP_PATH} (no-op)", NOOP_PATH, small, "application/json", work, None),
        Phase("b", "POST /v1/jobs, small JSON", "/v1/jobs", small, "application/json", work, SimulateAnalyzer.name),
        Phase("c", f"POST /v1/jobs, {len(upload) // 1024} KB multipart upload", "/v1/jobs", upload, upload_type,
              work, UploadAnalyzer.name),
    ]
    if args.breakdown:
        phases[1:1] = [
            Phase("p", f"parse only: POST {PARSE_ONLY_PATH} (no Redis)", PARSE_ONLY_PATH, small,
                  "application/json", work, None),
            Phase("r", f"Redis only: POST {REDIS_ROUND_TRIP_PATH}", REDIS_ROUND_TRIP_PATH, small,
                  "application/json", work, None),
        ]
    api_process = None
    failures: list[str] = []
    try:
        publish_catalog(client)
        api_process, url = start_api(server.url, entry, work)
        say(f"API {url} (pid {api_process.pid}, workers {worker_pids(api_process.pid)}); Redis {server.url}; "
            f"logs in {work}")
        for phase in phases:  # every thread's connections, the catalog cache, lazily built parts
            warm = run_wrk(phase, url, args, script, authorization, args.warmup)
            if warm["errors"]:
                failures.append(f"warm-up of ({phase.label}): {warm}")
        for round_no in range(1, args.rounds + 1):
            for phase in phases:
                client.flushdb()
                publish_catalog(client)
                run = run_wrk(phase, url, args, script, authorization, args.duration)
                phase.runs.append(run)
                held = queued_jobs(client, phase.queue) if phase.queue else None
                say(f"round {round_no} ({phase.label}): {run['rps']:.0f} req/s, p50 {run['p50_us'] / 1000:.2f} ms, "
                    f"p99 {run['p99_us'] / 1000:.2f} ms, errors {run['errors']}"
                    + (f", jobs queued in Redis {held}" if held is not None else ""))
                if run["errors"]:
                    failures.append(f"({phase.label}) round {round_no}: {run['status']} non-2xx answers, "
                                    f"socket errors connect {run['connect']} read {run['read']} "
                                    f"write {run['write']} timeout {run['timeout']}")
                if held is not None and held < run["requests"]:
                    failures.append(f"({phase.label}) round {round_no}: wrk counted {run['requests']} accepted "
                                    f"jobs but Redis queues {held}")
        memory = {pid: memory_mb(pid) for pid in worker_pids(api_process.pid)}
    finally:
        if api_process is not None:
            api_process.stop()
        client.close()
        server.stop()
    result = summarize(phases, memory, args)
    result["failures"] = failures
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    if failures:
        print("\nFAILED: the run had errors:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0 if not args.check or all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
