"""Lua scripts kept as ``.lua`` files in ``tasks/lua/``, loaded by name and called with named keys and arguments.

A script's file opens with its contract, one line each:

    --! keys: job input queue
    --! args: fields record_ttl input

and may pull in shared fragments (``tasks/lua/fragments/NAME.lua``) with
``--! include: NAME``. The loader turns the contract into
``local KEY = {job = KEYS[1], ...}`` and ``local ARG = {...}`` at the top of
the script, so the Lua reads by name, and Python passes dictionaries by name:
a missing or unknown name fails at the call in Python, not as a shifted
argument inside Redis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from redis import Redis
from redis.commands.core import Script

from tasks.pipelined import Pipelined

__all__ = ["LuaScript", "BoundScript", "load"]

LUA_DIR = Path(__file__).resolve().parent / "lua"
_CONTRACT = re.compile(r"^--!\s*(keys|args|include):\s*(.*)$")


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    keys: tuple[str, ...]
    args: tuple[str, ...]

    def order(self, keys: dict[str, Any], args: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """(KEYS, ARGV) in the script's order; raises ``TypeError`` on a missing or unknown name."""
        return _ordered(self.name, "key", self.keys, keys), _ordered(self.name, "arg", self.args, args)

    def bind(self, redis: Redis) -> BoundScript:
        return BoundScript(self, redis.register_script(self.source))


class BoundScript:
    """A script registered with one client: call it, or queue it on a ``Pipelined`` batch."""

    def __init__(self, script: LuaScript, registered: Script):
        self.script = script
        self.registered = registered

    def __call__(self, *, keys: dict[str, Any], args: dict[str, Any]) -> Any:
        ordered_keys, ordered_args = self.script.order(keys, args)
        return self.registered(keys=ordered_keys, args=ordered_args)

    def queue(self, batch: Pipelined, *, keys: dict[str, Any], args: dict[str, Any]) -> int:
        """Queue a run on ``batch``; returns the index of its reply in ``batch.execute()``'s list."""
        ordered_keys, ordered_args = self.script.order(keys, args)
        return batch.script(self.registered, ordered_keys, ordered_args)


def _ordered(script: str, kind: str, names: tuple[str, ...], given: dict[str, Any]) -> list[Any]:
    if given.keys() != set(names):
        missing, unknown = set(names) - given.keys(), given.keys() - set(names)
        raise TypeError(f"{script}.lua: {kind}s missing {sorted(missing)}, unknown {sorted(unknown)}")
    return [given[name] for name in names]


@cache
def load(name: str) -> LuaScript:
    """The script ``tasks/lua/NAME.lua`` with its fragments included and its contract bound to names."""
    keys: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    body: list[str] = []
    for line in (LUA_DIR / f"{name}.lua").read_text().splitlines():
        match = _CONTRACT.match(line)
        if match is None:
            body.append(line)
            continue
        what, names = match.group(1), tuple(match.group(2).split())
        if what == "keys":
            keys = names
        elif what == "args":
            args = names
        else:
            body += [(LUA_DIR / "fragments" / f"{fragment}.lua").read_text() for fragment in names]
    preamble = [_table("KEY", "KEYS", keys), _table("ARG", "ARGV", args)]
    return LuaScript(name, "\n".join(preamble + body) + "\n", keys, args)


def _table(local: str, source: str, names: tuple[str, ...]) -> str:
    return f"local {local} = {{" + ", ".join(f"{n} = {source}[{i}]" for i, n in enumerate(names, 1)) + "}"
