"""Many Redis commands and Lua scripts in one round trip.

redis-py's pipeline asks Redis ``SCRIPT EXISTS`` before every execution that
holds a script: a second round trip each time. Here scripts go as plain
EVALSHA; the rare one Redis does not know (it restarted and lost its script
cache) is run again on its own, which loads it. Commands are not retried:
an error other than a missing script is raised after the whole pipeline ran.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

__all__ = ["Pipelined"]


class Pipelined:
    def __init__(self, redis: Redis):
        #: Queue plain commands here (``setex``, ``delete``...).
        self.pipe = redis.pipeline(transaction=False)
        self._scripts: dict[int, tuple[Script, list, list]] = {}

    def script(self, script: Script, keys: list, args: list) -> int:
        """Queue a run of ``script``; returns the index of its reply in ``execute``'s list."""
        index = len(self.pipe.command_stack)
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)
        self._scripts[index] = (script, keys, args)
        return index

    def execute(self) -> list[Any]:
        if not self.pipe.command_stack:
            return []
        replies = self.pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                script, keys, args = self._scripts[index]
                replies[index] = script(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
        return replies
