"""The compose files, read as Docker Compose reads them: merged overrides, ``${VAR}`` interpolation.

tests/local_compose.py runs what this reads as local processes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
#: The API key the compose stack of the tests accepts: its SHA-256 is that stack's GPUQ_API_KEYS entry.
API_KEY = "compose-test-key"
COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"


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


def argv_of(command: Any) -> list[str]:
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
