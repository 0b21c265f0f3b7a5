"""`gpuq up`'s parts live exactly as long as it does, and a second `gpuq up` on taken ports starts nothing.

Real stacks (Redis, gunicorn, the launcher and its Celery worker, Flower) on free ports, with the light
noop analyzer; processes are followed through /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuq.redis_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PORT_VARIABLES = ("GPUQ_API_PORT", "GPUQ_FLOWER_PORT", "GPUQ_REDIS_PORT")


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQ_")}
    env.update({variable: str(free_port()) for variable in PORT_VARIABLES})
    env.update({"GPUQ_STATE_DIR": str(tmp_path / "state"), "GPUQ_ANALYZERS": "noop", "GPUQ_GPUS": "none",
                "GPUQ_CPU_WORKERS": "1", "GPUQ_API_WORKERS": "2", "GPUQ_UP_TIMEOUT": "120",
                "PYTHONUNBUFFERED": "1"})
    return env


class Up:
    """`gpuq up` as a person runs it, in a session of its own so that its signals are the test's to send."""

    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        with open(log, "wb") as sink:
            self.popen = subprocess.Popen([sys.executable, "-m", "gpuq.cli", "up"], env=env, cwd=ROOT,
                                          stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while "gpuq up: ready." not in self.output():
            assert self.popen.poll() is None, f"gpuq up exited at start:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"gpuq up not ready in {timeout}s:\n{self.output()[-4000:]}"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


@pytest.fixture
def up(env, tmp_path):
    started: list[Up] = []

    def start(environment: dict[str, str] | None = None, name: str = "up") -> Up:
        process = Up(environment or env, tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) from /proc, or None once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every process below ``root``: pid -> (start time, so that a reused pid is not taken for it; command)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            stat = _stat(pid)
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if stat is not None:
                found[pid] = (stat[2], command)
                todo.append(pid)
    return found


def _running(processes: dict[int, tuple[int, str]]) -> dict[int, str]:
    """Those still running: a zombie has ended, whoever reaps it."""
    running = {}
    for pid, (started, command) in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started and stat[1] != "Z":
            running[pid] = command
    return running


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_killed_gpuq_up_takes_every_part_with_it(up, env):
    stack = up()
    stack.wait_ready()
    parts = _descendants(stack.popen.pid)
    commands = [command for _, command in parts.values()]
    for part in ("redis-server", "gunicorn", "gpu_worker.launcher", "gpu_worker.worker worker", "flower"):
        assert any(part in command for command in commands), f"no {part} among {commands}"
    # Children of children too: gunicorn's workers and the Celery worker's pool process.
    assert sum("gunicorn" in c for c in commands) >= 3 and sum("gpu_worker.worker" in c for c in commands) >= 2
    ports = [int(env[variable]) for variable in PORT_VARIABLES]
    assert all(_listening(port) for port in ports)

    stack.popen.kill()  # as the OOM killer would: no handler, no clean-up of its own
    stack.popen.wait()
    deadline = time.monotonic() + 20
    while _running(parts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(parts) == {}, f"outlived gpuq up:\n{stack.output()[-3000:]}"
    assert not any(_listening(port) for port in ports)
    # Redis went last (gpuq/redis_guard.py): the stopping Celery worker never met it gone.
    after_kill = stack.output()
    for retry in ("Connection refused", "Cannot connect to redis", "Trying to re-establish"):
        assert retry not in after_kill, after_kill[-3000:]


def test_a_closed_terminal_stops_the_stack_in_order(up):
    stack = up()
    stack.wait_ready()
    parts = _descendants(stack.popen.pid)
    stack.popen.send_signal(signal.SIGHUP)
    assert stack.popen.wait(timeout=60) == 0
    assert stack.output().rstrip().endswith("gpuq up: stopped")
    assert _running(parts) == {}


def test_a_second_gpuq_up_beside_a_running_stack_starts_nothing(up, env, tmp_path):
    first = up()
    first.wait_ready()
    second = up({**env, "GPUQ_STATE_DIR": str(tmp_path / "second")}, name="second")
    assert second.popen.wait(timeout=30) == 1
    said = second.output()
    for variable in PORT_VARIABLES:
        assert f"port {env[variable]} " in said and f"set {variable}" in said
    assert "nothing was started" in said and "Is an earlier `gpuq up` still running?" in said
    assert not (tmp_path / "second").exists()
    assert "gpuq up: ready." in first.output() and first.popen.poll() is None


@pytest.mark.parametrize("variable", PORT_VARIABLES)
def test_one_taken_port_stops_gpuq_up_before_anything_starts(up, env, tmp_path, variable):
    port = int(env[variable])
    with socket.socket() as holder:
        # As gunicorn binds: with SO_REUSEPORT, which would let a second server share the port unnoticed.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        stack = up()
        assert stack.popen.wait(timeout=30) == 1
    said = stack.output()
    assert f"port {port} " in said and f"set {variable}" in said and "nothing was started" in said
    others = [v for v in PORT_VARIABLES if v != variable]
    assert not any(f"port {env[v]} " in said for v in others)
    assert not any(_listening(int(env[v])) for v in others)
    assert not (tmp_path / "state").exists()


def test_ctrl_c_while_waiting_for_readiness_stops_at_once(up, env):
    # The API listens on another port than the one readiness is asked at, so the stack never gets ready.
    stack = up({**env, "GPUQ_API_BIND": f"127.0.0.1:{free_port()}", "GPUQ_UP_TIMEOUT": "300"})
    deadline = time.monotonic() + 60
    while "starting flower" not in stack.output():
        assert stack.popen.poll() is None and time.monotonic() < deadline, stack.output()[-3000:]
        time.sleep(0.2)
    parts = _descendants(stack.popen.pid)
    stack.popen.send_signal(signal.SIGINT)
    assert stack.popen.wait(timeout=60) == 0, stack.output()[-3000:]  # not after GPUQ_UP_TIMEOUT's 300 s
    assert "gpuq up: ready." not in stack.output() and stack.output().rstrip().endswith("gpuq up: stopped")
    assert _running(parts) == {}


def test_a_killed_make_up_takes_the_stack_with_it(env, tmp_path):
    """As `make up` runs it: `gpuq up` the child of another process, which is killed outright."""
    log = tmp_path / "make-up.log"
    with open(log, "wb") as sink:
        # A shell that outlives its command stands in for make (it does not exec the command in its place).
        parent = subprocess.Popen(["sh", "-c", '"$0" -m gpuq.cli up; echo "gpuq up ended"', sys.executable],
                                  env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    parts: dict[int, tuple[int, str]] = {}
    try:
        deadline = time.monotonic() + 150
        while "gpuq up: ready." not in log.read_text(errors="replace"):
            assert parent.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.3)
        parts = _descendants(parent.pid)
        assert any("gpuq.cli up" in command for _, command in parts.values())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 90
        while _running(parts) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _running(parts) == {}, f"outlived the killed parent:\n{log.read_text()[-3000:]}"
        assert not any(_listening(int(env[variable])) for variable in PORT_VARIABLES)
        assert log.read_text().rstrip().endswith("gpuq up: stopped")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in _running(parts):  # what a failure left running, so that it holds no port for later tests
            os.kill(pid, signal.SIGKILL)


def test_a_killed_guarded_redis_dies_as_in_a_crash(tmp_path):
    from gpuq.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", guard_grace=5).start()
    guard = server.process.pid
    [redis_pid] = list(_descendants(guard))
    server.kill()
    deadline = time.monotonic() + 10
    while _listening(server.port):  # Redis's other threads, holding the socket, end a moment after the main one
        assert time.monotonic() < deadline, "Redis outlived its kill"
        time.sleep(0.05)
    assert _stat(redis_pid) is None or _stat(redis_pid)[1] == "Z"
    # Killed, not stopped: a clean stop logs its SIGTERM and a final AOF rewrite.
    assert "Received SIGTERM" not in (tmp_path / "redis" / "redis.log").read_text()
    server.outlive(os.getpid())  # a guard gone is no error
    assert server.process.stdin.closed
