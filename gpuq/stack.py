"""``gpuq up``: the whole stack on this machine, without Docker.

Redis (``GPUQ_REDIS_URL`` if set, else a local redis-server with AOF under
``.gpuq/``), the API under gunicorn, the worker launcher and Flower, each a
child process. Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stops them all,
workers last but one so running jobs can finish, Redis last. If any part dies,
the rest is stopped.

If ``gpuq up`` itself is killed outright (SIGKILL, the OOM killer), the kernel
sends every part SIGTERM (gpuq/die_with_parent.py), and Redis stops once the
others have (gpuq/redis_guard.py): nothing outlives it holding a port. The
kernel sends ``gpuq up`` a SIGTERM in turn when its own parent dies, so a
``make up`` killed outright stops the stack too. A port that is already taken
stops ``gpuq up`` before anything starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gpuq.die_with_parent import die_with_own_parent, die_with_parent
from gpuq.ports_in_use import Listener, in_use, refusal
from gpuq.redis_server import RedisServer
from gpuq.stop_grace import stop_grace

__all__ = ["run_stack"]

_ROOT = Path(__file__).resolve().parent.parent


def _start(name: str, command: list[str], env: dict[str, str], redis: RedisServer | None) -> subprocess.Popen:
    print(f"gpuq up: starting {name}: {' '.join(command)}", flush=True)
    process = subprocess.Popen(command, env=env, cwd=_ROOT, start_new_session=True, preexec_fn=die_with_parent())
    if redis is not None:
        redis.outlive(process.pid)
    return process


def _listeners(env: dict[str, str], redis_port: int | None) -> list[Listener]:
    """The ports the parts will listen on, where gunicorn.conf.py, Flower's flags and RedisServer put them."""
    listeners = []
    bind = env.get("GPUQ_API_BIND") or f"{env.get('GPUQ_API_HOST', '127.0.0.1')}:{env['GPUQ_API_PORT']}"
    host, _, port = bind.rpartition(":")
    if port.isdigit():  # not a unix socket
        variable = "GPUQ_API_BIND" if env.get("GPUQ_API_BIND") else "GPUQ_API_PORT"
        listeners.append(Listener("the API", host.strip("[]") or "0.0.0.0", int(port), variable))
    listeners.append(Listener("Flower", "127.0.0.1", int(env["GPUQ_FLOWER_PORT"]), "GPUQ_FLOWER_PORT"))
    if redis_port is not None:
        listeners.append(Listener("Redis", "127.0.0.1", redis_port, "GPUQ_REDIS_PORT (or GPUQ_REDIS_URL)"))
    return listeners


def _wait_ready(url: str, children: dict[str, subprocess.Popen], timeout: float,
                should_stop: Callable[[], bool]) -> bool:
    """Whether the API answered ready; False at once when a part died or a stop was asked (Ctrl-C, a closed
    terminal), rather than after the whole ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not should_stop():
        if any(p.poll() is not None for p in children.values()):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def run_stack(environ: dict[str, str] | None = None) -> int:
    die_with_own_parent()
    env = dict(os.environ if environ is None else environ)
    state = Path(env.get("GPUQ_STATE_DIR", _ROOT / ".gpuq"))
    api_port = env.setdefault("GPUQ_API_PORT", "8000")
    flower_port = env.setdefault("GPUQ_FLOWER_PORT", "5555")
    env.setdefault("GPUQ_STATE_DIR", str(state / "workers"))
    if not env.get("GPUQ_API_KEYS") and not env.get("GPUQ_AUTH"):
        # A development stack on this machine: the API listens on loopback unless told otherwise.
        env["GPUQ_AUTH"] = "off"
        print("gpuq up: GPUQ_API_KEYS is not set: the API runs without keys (GPUQ_AUTH=off), "
              "for local development only", flush=True)

    grace = stop_grace(env)  # the launcher's: a running job may finish before anything is killed
    redis_port = None if env.get("GPUQ_REDIS_URL") else int(env.get("GPUQ_REDIS_PORT", "6390"))
    taken = in_use(_listeners(env, redis_port))
    if taken:
        for line in refusal(taken).splitlines():
            print(f"gpuq up: {line}", file=sys.stderr, flush=True)
        return 1

    redis = None
    if redis_port is not None:
        # The launcher waits GPUQ_STOP_GRACE for its workers; Redis must be there until they are gone.
        redis = RedisServer(state / "redis", port=redis_port, guard_grace=grace + 15).start()
        env["GPUQ_REDIS_URL"] = redis.url
        print(f"gpuq up: redis-server on {redis.url} (AOF in {redis.directory})", flush=True)

    python = sys.executable
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    code = 0
    try:
        children["api"] = _start("api", [python, "-m", "gunicorn", "-c", str(_ROOT / "gunicorn.conf.py")], env,
                                  redis)
        children["workers"] = _start("workers", [python, "-m", "gpu_worker.launcher"], env, redis)
        flower_cmd = [python, "-m", "celery", "-A", "tasks.celery_app", "flower",
                      "--address=127.0.0.1", f"--port={flower_port}", "--persistent=True",
                      f"--db={state / 'flower.db'}", "--state_save_interval=60000"]
        if not env.get("FLOWER_BASIC_AUTH"):
            print("gpuq up: FLOWER_BASIC_AUTH is not set: Flower runs without a password on loopback only",
                  flush=True)
        children["flower"] = _start("flower", flower_cmd, env, redis)

        ready_url = f"http://127.0.0.1:{api_port}/readyz"
        if _wait_ready(ready_url, children, float(env.get("GPUQ_UP_TIMEOUT", "300")),
                       lambda: stopping):
            print(f"gpuq up: ready. API http://127.0.0.1:{api_port}  Flower http://127.0.0.1:{flower_port}  "
                  f"(Ctrl-C stops everything)", flush=True)
        elif not stopping:
            print(f"gpuq up: not ready yet; see {ready_url} for the reasons", flush=True)
        while not stopping:
            dead = [name for name, p in children.items() if p.poll() is not None]
            if dead:
                print(f"gpuq up: {', '.join(dead)} stopped unexpectedly; stopping the rest", flush=True)
                code = 1
                break
            time.sleep(0.5)
    finally:
        for name in ("api", "flower", "workers"):
            process = children.get(name)
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        if redis is not None:
            redis.stop()
        print("gpuq up: stopped", flush=True)
    return code
