"""``gpuq worker``: one Celery worker per GPU, kept alive, stopped cleanly.

The launcher finds the GPUs without initialising CUDA, starts one
``celery worker`` process tree per GPU (``CUDA_VISIBLE_DEVICES`` set to it,
concurrency 1), restarts a worker that dies with a growing delay, and on
SIGTERM or SIGINT asks every worker for a warm shutdown (running jobs finish)
before it kills what is left after the grace period. With no GPU it starts
``GPUQ_CPU_WORKERS`` CPU workers (default 1); on a host meant to have GPUs
(``GPUQ_GPUS`` names some, or ``nvidia-smi`` is installed) where none can be
listed it starts nothing and exits with the reason (``gpu_worker.devices``).
``GPUQ_ROUTES`` may give workers analyzers of their own
(``gpu_worker.routing``), ``GPUQ_WORKER_CPUS`` cores of their own
(``gpu_worker.cpu_affinity``).

A worker that exits before its models were ever loaded (no ready file) failed
its set-up; after a few such failures in a row its slot is given up. So is the
slot of a worker that stopped because its GPU kept failing
(``gpu_worker.device_health``). The launcher exits with an error once no slot is left.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpu_worker.cpu_affinity import VARIABLE as CORES_VARIABLE
from gpu_worker.cpu_affinity import worker_core_lists
from gpu_worker.device_health import DeviceHealth
from gpu_worker.devices import GpuDiscoveryError, discover_gpus, named_gpus
from gpu_worker.registry import DEFAULT_ANALYZERS
from gpu_worker.routing import route_analyzers
from gpuq.die_with_parent import die_with_parent
from gpuq.stop_grace import stop_grace
from tasks import logs
from tasks.settings import SettingsError

__all__ = ["Launcher", "Slot", "plan_slots", "main"]

log = logging.getLogger("gpuq.launcher")

SETUP_FAILURES_BEFORE_GIVING_UP = 3
_MAX_BACKOFF = 30.0
_HEALTHY_AFTER = 60.0  # a worker up this long has its backoff reset


@dataclass
class Slot:
    name: str
    env: dict[str, str]
    ready_file: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff: float = 1.0
    setup_failures: int = 0
    given_up: bool = False
    history: list[int] = field(default_factory=list)


def plan_slots(environ: dict[str, str], state_dir: Path, gpus: list[str] | None = None) -> list[Slot]:
    """One slot per id in ``gpus``, or CPU slots when it is empty.

    ``gpus`` is what ``discover_gpus`` found; left out, the ids are taken as
    ``GPUQ_GPUS`` or ``CUDA_VISIBLE_DEVICES`` names them, unchecked, so a plan
    can be made for a host other than this one.
    """
    # In a container the hostname is its id: GPUQ_HOSTNAME names the machine instead.
    host = environ.get("GPUQ_HOSTNAME") or socket.gethostname()
    if gpus is None:
        named = named_gpus(environ)
        gpus = named[1] if named is not None else []
    if gpus:
        specs = [(f"gpu{gpu}@{host}", {"CUDA_VISIBLE_DEVICES": gpu, "GPUQ_DEVICE": "cuda"}) for gpu in gpus]
    else:
        count = int(environ.get("GPUQ_CPU_WORKERS", "1"))
        if count < 1:
            raise SystemExit("GPUQ_CPU_WORKERS must be at least 1")
        specs = [(f"cpu{i}@{host}", {"CUDA_VISIBLE_DEVICES": "", "GPUQ_DEVICE": "cpu"}) for i in range(count)]
    # Routed workers get their own GPUQ_ANALYZERS; the rest keep the host's.
    routes = route_analyzers(environ.get("GPUQ_ROUTES", ""), [name.split("@")[0] for name, _ in specs])
    for name, extra in specs:
        if (key := name.split("@")[0]) in routes:
            extra["GPUQ_ANALYZERS"] = routes[key]
    # Each worker's pool child gets its own entry of GPUQ_WORKER_CPUS (or the one shared list).
    for (_, extra), cores in zip(specs, worker_core_lists(environ.get(CORES_VARIABLE, ""), len(specs)), strict=True):
        if cores is not None:
            extra[CORES_VARIABLE] = cores
    slots = []
    for name, extra in specs:
        ready = state_dir / f"{name.split('@')[0]}.ready"
        env = {**environ, **extra, "GPUQ_WORKER_NAME": name, "GPUQ_READY_FILE": str(ready),
               # torch.cuda.is_available() then asks NVML instead of initialising CUDA.
               "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
               # CUDA numbers GPUs fastest first unless told otherwise; nvidia-smi and NVML by
               # PCI bus. The same order makes gpu3 the card nvidia-smi and the telemetry call 3.
               "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        slots.append(Slot(name=name, env=env, ready_file=ready))
    return slots


class Launcher:
    def __init__(self, slots: list[Slot], *, loglevel: str = "INFO", grace: float = 60.0, quiet: bool = False):
        self.slots = slots
        self.loglevel = loglevel
        self.grace = grace
        self.quiet = quiet
        self._stopping = False

    def command(self, slot: Slot) -> list[str]:
        # --quiet drops Celery's start-up banner, the one thing it prints outside logging
        # (so JSON logs stay one object a line).
        return [sys.executable, "-m", "celery", *(["--quiet"] if self.quiet else []), "-A", "gpu_worker.worker",
                "worker", "--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1",
                "--hostname", slot.name, "--loglevel", self.loglevel, "--without-mingle", "--without-gossip"]

    def start(self, slot: Slot) -> None:
        slot.ready_file.unlink(missing_ok=True)
        if not slot.history:  # a device fault count left by an earlier launcher does not carry over
            DeviceHealth.beside(slot.ready_file).clear()
        slot.process = subprocess.Popen(self.command(slot), env=slot.env, start_new_session=True,
                                        preexec_fn=die_with_parent())
        slot.started_at = time.monotonic()
        log.info("started worker %s (pid %d)", slot.name, slot.process.pid)

    def request_stop(self, signum: int, _frame=None) -> None:
        if not self._stopping:
            log.info("received %s: stopping workers (running jobs finish first)", signal.Signals(signum).name)
        self._stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        for slot in self.slots:
            self.start(slot)
        while not self._stopping:
            for slot in self.slots:
                self._watch(slot)
            if all(slot.given_up for slot in self.slots):
                log.error("every worker failed to load its analyzers or stopped for its GPU; "
                          "see the messages above")
                return 1
            time.sleep(0.2)
        return self._shutdown()

    def _watch(self, slot: Slot) -> None:
        now = time.monotonic()
        if slot.given_up:
            return
        if slot.process is None:
            if now >= slot.restart_at:
                self.start(slot)
            return
        code = slot.process.poll()
        if code is None:
            if now - slot.started_at > _HEALTHY_AFTER:
                slot.backoff = 1.0
            return
        slot.history.append(code)
        slot.process = None
        stopped_because = DeviceHealth.beside(slot.ready_file).stopped_because()
        if stopped_because:  # its GPU kept failing: another start would fail the same way
            slot.given_up = True
            log.error("worker %s stopped and is not restarted: %s", slot.name, stopped_because)
            return
        if slot.ready_file.exists():
            slot.setup_failures = 0
            log.warning("worker %s exited with status %d; restarting in %.0fs", slot.name, code, slot.backoff)
        else:
            slot.setup_failures += 1
            if slot.setup_failures >= SETUP_FAILURES_BEFORE_GIVING_UP:
                slot.given_up = True
                log.error("worker %s failed to start %d times in a row; giving up on it",
                          slot.name, slot.setup_failures)
                return
            log.warning("worker %s exited with status %d before it was ready; retrying in %.0fs",
                        slot.name, code, slot.backoff)
        slot.restart_at = now + slot.backoff
        slot.backoff = min(slot.backoff * 2, _MAX_BACKOFF)

    def _shutdown(self) -> int:
        running = [s.process for s in self.slots if s.process is not None and s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        deadline = time.monotonic() + self.grace
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d still running after %.0fs; killing it", process.pid, self.grace)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.info("all workers stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    logs.configure(env.get("GPUQ_LOG_LEVEL", "INFO").upper(), env)
    state_dir = Path(env.get("GPUQ_STATE_DIR") or tempfile.mkdtemp(prefix="gpuq-worker-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        slots = plan_slots(env, state_dir, discover_gpus(env))
    # No GPU where one is expected, a bad route or core list: stop before any worker starts.
    except (GpuDiscoveryError, SettingsError) as error:
        raise SystemExit(f"gpuq worker: {error}") from None
    for slot in slots:
        log.info("worker %s serves %s", slot.name, slot.env.get("GPUQ_ANALYZERS", DEFAULT_ANALYZERS))
    grace = stop_grace(env)
    return Launcher(slots, loglevel=env.get("GPUQ_LOG_LEVEL", "INFO"), grace=grace,
                    quiet=logs.log_format(env) == "json").run()


if __name__ == "__main__":
    sys.exit(main())
