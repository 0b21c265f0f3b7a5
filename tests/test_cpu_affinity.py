"""GPUQ_WORKER_CPUS: each worker's model process on cores of its own, its Celery main process left alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from gpu_worker.cpu_affinity import parse_core_list, worker_core_lists
from gpu_worker.launcher import plan_slots
from gpu_worker.switch_interval import SWITCH_INTERVAL
from gpuq.redis_server import RedisServer
from tasks.settings import SettingsError
from tests.stack import base_env, start_api, start_workers, wait_for_status, wait_for_workers


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _allowed_cores(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_core_list(line.split(":", 1)[1])
    raise AssertionError(f"no Cpus_allowed_list for pid {pid}")


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_core_lists_are_read_as_linux_writes_them():
    assert parse_core_list("0-3,8") == {0, 1, 2, 3, 8}
    assert parse_core_list(" 5 ") == {5}
    for bad in ("", "a", "3-1", "1-", "-1", "0,,1", "0;1"):
        with pytest.raises(SettingsError, match="GPUQ_WORKER_CPUS"):
            parse_core_list(bad)


def test_one_list_serves_every_worker_or_each_worker_has_its_own():
    assert worker_core_lists("", 2) == [None, None]
    assert worker_core_lists("0-3", 3) == ["0-3"] * 3
    assert worker_core_lists("0-7; 8-15", 2) == ["0-7", "8-15"]
    with pytest.raises(SettingsError, match="3 core lists for 2 workers"):
        worker_core_lists("0;1;2", 2)
    with pytest.raises(SettingsError, match="not a list of cores"):
        worker_core_lists("0;x", 2)


def test_the_launcher_gives_each_worker_its_own_list(tmp_path):
    slots = plan_slots({"GPUQ_GPUS": "0,3", "GPUQ_WORKER_CPUS": "0-7;8-15"}, tmp_path)
    assert [s.env["GPUQ_WORKER_CPUS"] for s in slots] == ["0-7", "8-15"]
    shared = plan_slots({"GPUQ_GPUS": "none", "GPUQ_CPU_WORKERS": "2", "GPUQ_WORKER_CPUS": "1"}, tmp_path)
    assert [s.env["GPUQ_WORKER_CPUS"] for s in shared] == ["1", "1"]
    assert "GPUQ_WORKER_CPUS" not in plan_slots({"GPUQ_GPUS": "none"}, tmp_path)[0].env
    with pytest.raises(SettingsError, match="2 core lists for 1 workers"):
        plan_slots({"GPUQ_GPUS": "none", "GPUQ_WORKER_CPUS": "0;1"}, tmp_path)


def test_the_model_process_runs_on_its_cores_and_celery_main_keeps_its_own(own_redis, tmp_path):
    mine = os.sched_getaffinity(0)
    core = max(mine)  # a core this test may use, whatever the machine
    env = base_env(own_redis.url, GPUQ_ANALYZERS="tests.fixtures.analyzers:Echo", GPUQ_WORKER_CPUS=str(core))
    process = start_workers(env, tmp_path)
    api_process, api = start_api(env, tmp_path, workers=1)
    try:
        [worker] = wait_for_workers(own_redis.url, {"echo"}, process)
        assert _allowed_cores(worker["pid"]) == {core}
        assert _allowed_cores(_parent_of(worker["pid"])) == mine  # Celery's main process: as started
        job = requests.post(f"{api}/v1/jobs", json={"analyzer": "echo", "input": {"n": 1}}, timeout=5).json()
        result = wait_for_status(api, job["id"], {"succeeded"})["result"]
        assert result["pid"] == worker["pid"]
        assert f"model process pinned to cores {core}" in process.output()
        assert "freed host memory kept in the process" in process.output()  # gpu_worker.host_memory
        assert result["switch_interval"] == SWITCH_INTERVAL  # gpu_worker.switch_interval
        assert f"switch interval {SWITCH_INTERVAL * 1000:g} ms" in process.output()
    finally:
        api_process.stop()
        process.stop()


def test_cores_the_machine_does_not_have_stop_the_worker_with_a_clear_message(own_redis, tmp_path):
    env = base_env(own_redis.url, GPUQ_ANALYZERS="tests.fixtures.analyzers:Echo", GPUQ_WORKER_CPUS="4096")
    process = start_workers(env, tmp_path)
    try:
        assert process.popen.wait(timeout=90) == 1
        output = process.output()
        assert "GPUQ_WORKER_CPUS='4096': cannot run on those cores" in output
        assert "failed to start 3 times in a row" in output
    finally:
        process.stop()
