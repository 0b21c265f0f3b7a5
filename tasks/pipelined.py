"""Many Redis commands and Lua scripts in one round trip.

redis-py's pipeline asks Redis ``SCRIPT EXISTS`` before every execution that
holds a script: a second round trip each time. Here a script is loaded once
per process and client, then goes as plain EVALSHA. If Redis has lost it
since (a restart empties its script cache), that call is refused without
running and is run again on its own, which loads it: after the commands that
followed it in the pipeline. Queue here only writes whose order does not
matter beyond that (the end of a batch: results, then records, then idempotent
releases). Commands are not retried: an error other than a missing script is
raised after the whole pipeline ran.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

__all__ = ["Pipelined"]

#: Script digests each connection pool's Redis is known to hold (loaded by this process).
_loaded: dict[int, set[str]] = {}


class Pipelined:
    def __init__(self, redis: Redis):
        #: Queue plain commands here (``setex``, ``delete``...).
        self.pipe = redis.pipeline(transaction=False)
        self._scripts: dict[int, tuple[Script, list, list]] = {}

    def script(self, script: Script, keys: list, args: list) -> int:
        """Queue a run of ``script``; returns the index of its reply in ``execute``'s list."""
        known = _loaded.setdefault(id(self.pipe.connection_pool), set())
        if script.sha not in known:
            script.registered_client.script_load(script.script)
            known.add(script.sha)
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
