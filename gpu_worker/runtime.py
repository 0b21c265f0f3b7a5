"""One worker process's runtime: its device, its loaded analyzers, its heartbeat.

Built once per pool child, before the child takes a job. Loading fails loudly:
the caller stops the worker instead of failing jobs one by one.

A sticky device error ends the process once its batch was given back
(``gpu_worker.device_faults``): the heartbeat says ``unhealthy`` and why, so
readiness and metrics stop counting the worker, and Celery forks a fresh
process. After ``GPUQ_DEVICE_FAULT_RESTARTS`` of them in a row the whole
worker stops (``gpu_worker.device_health``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from gpu_worker import registry
from gpu_worker.analyzer import Analyzer
from gpu_worker.cpu_affinity import VARIABLE as CORES_VARIABLE
from gpu_worker.cpu_affinity import pin_to_cores
from gpu_worker.device_faults import DeviceFault
from gpu_worker.device_health import DeviceHealth
from gpu_worker.devices import describe_device, limit_torch_threads
from gpu_worker.host_memory import keep_freed_memory
from gpu_worker.job_metrics import record_finished_jobs
from gpu_worker.joblock import JobLock
from gpu_worker.runner import JobRunner
from gpu_worker.switch_interval import SWITCH_INTERVAL, hand_back_the_gil_sooner
from gpu_worker.telemetry import GpuProbe
from tasks import catalog, logs
from tasks.jobs import JobStore
from tasks.settings import Settings

__all__ = ["EXIT_DEVICE_FAULT", "WorkerRuntime", "worker_redis"]

log = logging.getLogger("gpuq.worker")

READY, BUSY, UNHEALTHY = "ready", "busy", "unhealthy"

#: Exit status of a model process that ended because its GPU broke.
EXIT_DEVICE_FAULT = 75


def worker_redis(settings: Settings) -> Redis:
    """A client that rides out a Redis restart: a finished job's result must not
    be lost because Redis was away for a minute while the model ran."""
    return settings.connect_redis(socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
                                  retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=60),
                                  retry_on_error=[RedisConnectionError, RedisTimeoutError])


class WorkerRuntime:
    def __init__(self, *, name: str, settings: Settings, redis: Redis, device: str, device_label: str,
                 analyzers: dict[str, Analyzer], runner: JobRunner, gpu: GpuProbe | None = None,
                 device_health: DeviceHealth | None = None):
        self.name = name
        self.settings = settings
        self.redis = redis
        self.device = device
        self.device_label = device_label
        self.analyzers = analyzers
        self.runner = runner
        self.gpu = gpu
        self.device_health = device_health
        #: Faults in a row of this worker's GPU, as this process knows them: read once, from the
        #: processes before it; 0 once a batch ran here; the new count once one broke it.
        self._faults_in_a_row = device_health.faults_in_a_row() if device_health is not None else 0
        self.state = READY
        self.unhealthy_because: str | None = None
        self.current_job: str | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._specs_published = False

    @classmethod
    def start(cls, *, name: str, settings: Settings, backend: Any, analyzer_classes: list[type[Analyzer]],
              environ: dict[str, str]) -> WorkerRuntime:
        # Cores first: the threads torch and the analyzers start inherit them.
        host_cores = os.sched_getaffinity(0)
        cores = pin_to_cores(environ.get(CORES_VARIABLE))
        if cores is not None:
            log.info("%s: model process pinned to cores %s", name, ",".join(str(c) for c in sorted(cores)))
        limit_torch_threads(settings.torch_threads)
        if keep_freed_memory(environ):
            log.info("%s: freed host memory kept in the process (malloc thresholds fixed)", name)
        # The recorder thread shares the GIL with predict: the model's thread gets it back sooner.
        previous = hand_back_the_gil_sooner()
        log.info("%s: switch interval %g ms (was %g ms)", name, SWITCH_INTERVAL * 1000, previous * 1000)
        device, label = describe_device(environ.get("GPUQ_DEVICE", "cpu"))
        analyzers: dict[str, Analyzer] = {}
        for cls_ in analyzer_classes:
            began = time.perf_counter()
            analyzer = cls_()
            analyzer.setup(device)
            registry.check_loaded(analyzer)
            analyzers[cls_.name] = analyzer
            log.info("%s: analyzer %r ready on %s in %.2fs", name, cls_.name, label, time.perf_counter() - began)
        redis = worker_redis(settings)
        store = JobStore(redis, result_ttl=settings.result_ttl, tombstone_ttl=settings.tombstone_ttl,
                         input_ttl=settings.input_ttl)
        lock = JobLock(store.lifecycle, ttl=settings.job_time_limit + 120, local_worker=name)
        # A task runs on with more batches for 5 s at most, 1 s once the worker's other
        # analyzers have jobs waiting, and never for more than a twentieth of the time limit,
        # which counts from the task's start: a batch that runs on keeps nearly all of it.
        runner = JobRunner(store, backend, analyzers, worker=name, device_label=label,
                           max_attempts=settings.max_attempts, lock=lock, batching=settings.batching_enabled,
                           run_on_seconds=min(5.0, settings.job_time_limit / 20),
                           fair_share_seconds=min(1.0, settings.job_time_limit / 20),
                           host_cores=host_cores if cores is not None else None)
        # Not cleared here: Celery may fork a fresh process even while the worker stops for its GPU,
        # and the launcher must still read why. It clears the record when it starts the worker.
        health = DeviceHealth.for_worker(name, environ)
        runtime = cls(name=name, settings=settings, redis=redis, device=device, device_label=label,
                      analyzers=analyzers, runner=runner, gpu=GpuProbe.for_worker(device, environ),
                      device_health=health)
        runner.blame_jobs = runtime._blame_jobs
        runtime._beat()  # publishes the analyzers' specs too
        runtime._heartbeat = threading.Thread(target=runtime._beat_forever, name="gpuq-heartbeat", daemon=True)
        runtime._heartbeat.start()
        ready_file = environ.get("GPUQ_READY_FILE")
        if ready_file:
            Path(ready_file).write_text(str(os.getpid()))
        return runtime

    def run(self, job_id: str) -> None:
        self.state, self.current_job = BUSY, job_id
        began = time.time()
        with logs.job_context(job_id):
            try:
                self.runner.run(job_id)
            finally:
                # Whatever was raised on the way out: once a batch met a device fault, this process ends.
                if self.runner.device_broken is not None:
                    self._end_for_device_fault(self.runner.device_broken)
                self.state, self.current_job = READY, None
                unobserved = [i for i in self.runner.handled if i not in self.runner.observed]
                record_finished_jobs(self.runner.store, unobserved, since=began)
                self._settle_fault_streak()

    def _settle_fault_streak(self) -> None:
        """A batch ran on the device since the last fault: the next one starts a new streak."""
        if self._faults_in_a_row and self.runner.batches_run and self.device_health is not None:
            self.device_health.record_batch_run()
            self._faults_in_a_row = 0

    def _blame_jobs(self) -> bool:
        """Whether a device fault now is counted on the jobs it struck: not when it is the fault that
        stops the worker, whose GPU is then taken for the cause (the jobs run elsewhere, uncounted)."""
        if self.runner.batches_run:
            return True  # the device worked in this process: this fault starts a new streak
        return self._faults_in_a_row + 1 < self.settings.device_fault_restarts

    def _end_for_device_fault(self, fault: DeviceFault) -> NoReturn:
        """End this process after its GPU broke; after too many in a row, the whole worker.

        The heartbeat says why first, so the API stops counting this worker at once
        rather than after its heartbeat expires. The process ends whatever fails on the way.
        """
        try:
            self._settle_fault_streak()
            faults = self.device_health.record_fault(str(fault)) if self.device_health is not None else 1
            self._faults_in_a_row = faults
            bound = self.settings.device_fault_restarts
            self.state = UNHEALTHY
            self.unhealthy_because = f"its GPU failed ({fault}); {faults} time(s) in a row of at most {bound}"
            if faults >= bound:
                reason = (f"gpuq worker {self.name} stops: its GPU failed {faults} times in a row, each time in "
                          f"a fresh model process (the last: {fault}); check the GPU (nvidia-smi, the kernel "
                          f"log's Xid messages) before starting it again")
                if self.device_health is not None:
                    self.device_health.record_stop(reason)
                log.critical("%s", reason)
                print(reason, file=sys.stderr, flush=True)
                os.kill(os.getppid(), signal.SIGTERM)  # the Celery parent: a warm shutdown, then it exits
            else:
                log.error("%s: the GPU failed under a batch (%s); its jobs went back to the queue and this model "
                          "process ends, for a fresh one (%d of %d in a row)", self.name, fault, faults, bound)
            try:
                self._beat()
            except Exception:  # Redis away: the heartbeat expires instead
                pass
            self.runner.member_events.close()  # os._exit skips the shutdown signal that would flush them
            logging.shutdown()
        finally:
            os._exit(EXIT_DEVICE_FAULT)

    def stop(self) -> None:
        self._stop.set()
        try:
            catalog.forget_worker(self.redis, self.name)
        except Exception:  # Redis may already be gone at shutdown; the heartbeat expires anyway
            pass

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "device": self.device_label, "pid": os.getpid(),
                "unhealthy_because": self.unhealthy_because,
                "device_faults_in_a_row": self._faults_in_a_row,
                # Items per forward pass of the analyzers that run in passes: lowered after running out of memory.
                "pass_sizes": {name: size for name, a in self.analyzers.items()
                               if isinstance(size := getattr(a, "items_per_pass", None), int)},
                "analyzers": sorted(self.analyzers), "job": self.current_job, "heartbeat_at": time.time(),
                "weights_sha256": {name: a.weights_sha256 for name, a in self.analyzers.items()},
                # GPU memory and utilisation, relayed by the API's /metrics; None on a CPU worker.
                "gpu": self.gpu.sample() if self.gpu is not None else None}

    def _beat(self) -> None:
        # The heartbeat first: it says this worker lives, whatever becomes of its specs.
        catalog.publish_heartbeat(self.redis, self.name, self.info(), self.settings.heartbeat_ttl)
        try:
            self._publish_specs()
        except Exception as error:  # a spec left unrenewed this once still lives its TTL
            log.warning("%s: publishing the analyzers' specs failed: %s", self.name, error)

    def _publish_specs(self) -> None:
        # Specs are renewed with every beat, so that an analyzer no worker serves any more
        # expires; they live at least a heartbeat TTL, so one missed beat never retires them.
        # Only the first publish writes over a live spec: this process's version wins once.
        catalog.publish_analyzers(self.redis, [type(a).spec() for a in self.analyzers.values()],
                                  max(self.settings.analyzer_ttl, self.settings.heartbeat_ttl),
                                  replace=not self._specs_published)
        self._specs_published = True

    def _beat_forever(self) -> None:
        interval = max(1.0, self.settings.heartbeat_ttl / 3)
        while not self._stop.wait(interval):
            try:
                self._beat()
            except Exception as error:  # Redis away for a moment: keep beating once it is back
                log.warning("%s: heartbeat failed: %s", self.name, error)
