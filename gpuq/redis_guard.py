"""``python -m gpuq.redis_guard --grace S -- redis-server ARGS``: a Redis that stops after the parts that use it.

``gpuq up`` stops its parts in order, Redis last, because a Celery worker
says goodbye to Redis as it stops and keeps retrying while Redis is gone
(until its launcher's grace runs out, a minute by default). When ``gpuq up``
is killed outright there is no one left to keep that order: every part gets
its parent-death SIGTERM at once. So Redis runs under this guard instead: the
guard gets the SIGTERM, waits (at most ``--grace`` seconds) for the processes
whose ids ``gpuq up`` wrote to its stdin, one a line, and only then stops Redis.

Redis itself dies with the guard (gpuq/die_with_parent.py), so a guard that is
killed outright takes Redis with it.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import threading
import time

from gpuq.die_with_parent import die_with_parent

__all__ = ["main"]


class _Watched:
    """Processes to outlive, held by pidfd: a pid that ends and is reused stays ended.

    Without pidfds (not Linux) nothing is watched: there no parent-death signal
    comes either, and an orderly stop has stopped the parts before Redis.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._fds: list[int] = []

    def add(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux, or already gone
            return
        with self._lock:
            self._fds.append(fd)

    def read_from(self, stream) -> None:
        for line in stream:
            if line.strip().isdigit():
                self.add(int(line))

    def wait_gone(self, deadline: float) -> None:
        with self._lock:
            fds = list(self._fds)
        for fd in fds:
            # A pidfd reads ready once its process has ended.
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpuq.redis_guard")
    parser.add_argument("--grace", type=float, required=True,
                        help="the longest wait for the watched processes before Redis stops anyway")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- redis-server and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no redis-server command after --")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    server = subprocess.Popen(command, preexec_fn=die_with_parent())
    watched = _Watched()
    threading.Thread(target=watched.read_from, args=(sys.stdin,), daemon=True, name="pids").start()

    while not stop.is_set() and server.poll() is None:
        stop.wait(0.2)
    if server.poll() is not None:
        return server.returncode
    watched.wait_gone(time.monotonic() + args.grace)
    server.terminate()
    try:
        return server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


if __name__ == "__main__":
    sys.exit(main())
