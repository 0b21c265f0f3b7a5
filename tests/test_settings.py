"""Configuration: a missing or malformed value fails loudly at start-up; JSON only on the wire."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tasks.settings import Settings, SettingsError
from tests.stack import ROOT, base_env


def _import_celeryconfig(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import celeryconfig as c; print(c.accept_content, c.task_serializer,"
                           " c.result_serializer, c.event_serializer, c.result_accept_content)"],
                          env=env, cwd=ROOT, capture_output=True, text=True)


def test_missing_redis_url_fails_loudly():
    env = base_env("redis://127.0.0.1:1/0")
    del env["GPUQ_REDIS_URL"]
    result = _import_celeryconfig(env)
    assert result.returncode != 0 and "GPUQ_REDIS_URL is not set" in result.stderr
    with pytest.raises(SettingsError, match="GPUQ_REDIS_URL"):
        Settings.from_env({})


@pytest.mark.parametrize("name,value", [("GPUQ_REDIS_URL", "http://localhost"),
                                        ("GPUQ_JOB_TIME_LIMIT", "soon"), ("GPUQ_RESULT_TTL", "-5")])
def test_malformed_values_fail_loudly(name, value):
    result = _import_celeryconfig(base_env("redis://127.0.0.1:1/0", **{name: value}))
    assert result.returncode != 0 and name in result.stderr


def test_settings_parse_and_reject():
    settings = Settings.from_env({"GPUQ_REDIS_URL": "redis://h:1/0", "GPUQ_MAX_ATTEMPTS": "5",
                                  "GPUQ_MAX_WAIT": "12.5"})
    assert settings.max_attempts == 5 and settings.max_wait == 12.5
    with pytest.raises(SettingsError, match="GPUQ_MAX_ATTEMPTS"):
        Settings.from_env({"GPUQ_REDIS_URL": "redis://h:1/0", "GPUQ_MAX_ATTEMPTS": "three"})


def test_json_only_on_the_wire():
    result = _import_celeryconfig(base_env("redis://127.0.0.1:1/0"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['json']", "json", "json", "json", "['json']"]


def test_worker_failing_to_start_gives_a_clear_message_without_redis_url():
    env = base_env("redis://127.0.0.1:1/0")
    del env["GPUQ_REDIS_URL"]
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--check-config"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "GPUQ_REDIS_URL" in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["GPUQ_API_THREADS=8", "GUNICORN_CMD_ARGS=--threads 4", "GPUQ_MAX_LONG_POLLS=16"])
def test_the_api_refuses_to_start_when_waits_could_hold_every_thread(how, tmp_path):
    name, value = how.split("=", 1)
    env = {**base_env("redis://127.0.0.1:1/0"), "GPUQ_API_PORT": "0", name: value}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "GPUQ_MAX_STREAMS + GPUQ_MAX_LONG_POLLS" in done.stderr + done.stdout, done.stderr[-2000:]
