"""Flower, as the compose file starts it, seen in a real headless Chromium: the worker, a finished job,
and every job of a ``gpuq batch`` run, the ones its batches took from the queue themselves included.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them). Screenshots land in ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from tests.compose import API_KEY
from tests.stack import ROOT

ARTIFACTS = ROOT / "test-artifacts"
USER, PASSWORD = "ops", "compose-test-secret"  # FLOWER_BASIC_AUTH of the compose_stack fixture
KEY = {"Authorization": f"Bearer {API_KEY}"}  # the compose API runs with auth on

# The machine has no network: without these, Chromium hangs on lookups and updates.
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage", "--window-size=1440,1000")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "needs Debian's chromium and chromium-driver (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in _FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    # An explicit driver path: Selenium Manager, which would go to the network, is not used.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path, log_output=str(log)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _authenticate(driver) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def _wait_for_text(driver, url: str, texts: list[str], timeout: float = 30) -> str:
    """Load ``url`` (again, while Flower has not seen the events yet) until every text shows."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        driver.get(url)
        inner = time.monotonic() + 5
        while time.monotonic() < inner:
            body = driver.find_element("tag name", "body").text
            if all(text in body for text in texts):
                return body
            time.sleep(0.3)
    raise AssertionError(f"{url} never showed {texts}; it showed:\n{body[:3000]}")


def test_flower_without_credentials_is_refused(compose_stack, browser):
    flower = compose_stack.url("flower", 5555)
    assert requests.get(f"{flower}/", timeout=10).status_code == 401
    assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401


def test_flower_shows_the_worker_and_the_finished_job(compose_stack, browser, finished_job):
    flower = compose_stack.url("flower", 5555)
    _authenticate(browser)
    ARTIFACTS.mkdir(exist_ok=True)
    worker = finished_job["worker"]  # cpu0@<host> here; gpu0@<host> on a GPU host

    workers = _wait_for_text(browser, f"{flower}/workers", [worker, "Online"])
    assert "Online workers" in workers
    browser.save_screenshot(str(ARTIFACTS / "flower-workers.png"))

    job_id = finished_job["id"]
    tasks = _wait_for_text(browser, f"{flower}/tasks", [job_id, "gpuq.run:digits", "SUCCESS", worker])
    assert tasks
    browser.save_screenshot(str(ARTIFACTS / "flower-tasks.png"))

    detail = _wait_for_text(browser, f"{flower}/task/{job_id}", ["gpuq.run:digits", "SUCCESS", job_id])
    assert worker in detail
    browser.save_screenshot(str(ARTIFACTS / "flower-task.png"))


def _search_tasks(driver, flower: str, text: str, timeout: float = 30) -> str:
    """Flower's task list searched for ``text`` in its search box, as an operator does."""
    driver.get(f"{flower}/tasks")
    box = driver.find_element("css selector", "#tasks-table_filter input")
    box.clear()
    box.send_keys(text)
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element("tag name", "body").text
        if text in body and "of 1 tasks" in body:
            return body
        time.sleep(0.3)
    return body


def _wait_until_running(api: str, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while requests.get(f"{api}/v1/jobs/{job_id}", headers=KEY, timeout=10).json()["status"] != "running":
        assert time.monotonic() < deadline, f"job {job_id} never ran"
        time.sleep(0.05)


def _flower_json(flower: str, path: str) -> dict:
    response = requests.get(f"{flower}{path}", auth=(USER, PASSWORD), timeout=10)
    response.raise_for_status()
    return response.json()


def _worker_counts(flower: str, worker: str) -> dict[str, int]:
    """Flower's counts of the worker's task events: its workers page's Processed, Succeeded and Failed."""
    for row in _flower_json(flower, "/workers?json=1")["data"]:
        if row.get("hostname") == worker:
            return {kind: row.get(kind, 0) for kind in ("task-received", "task-succeeded", "task-failed")}
    return {"task-received": 0, "task-succeeded": 0, "task-failed": 0}


def _wait_for_flower_tasks(flower: str, states: dict[str, str], timeout: float = 30) -> dict[str, dict]:
    """Flower's tasks (``/api/tasks``), once each job id of ``states`` is there in its state."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = _flower_json(flower, "/api/tasks?limit=100000")
        if all(tasks.get(job_id, {}).get("state") == state for job_id, state in states.items()):
            return tasks
        if time.monotonic() > deadline:
            wrong = {j: tasks.get(j, {}).get("state") for j, state in states.items()
                     if tasks.get(j, {}).get("state") != state}
            raise AssertionError(f"Flower's tasks not as expected ({len(wrong)} of {len(states)}): {wrong}")
        time.sleep(0.5)


def test_flower_shows_each_job_of_a_gpuq_batch_once_batch_members_and_failures_included(
        compose_stack, browser, finished_job, tmp_path):
    """A ``gpuq batch`` of 50 files, 3 of them bad, shows as 47 successes and 3 failures, each job once."""
    flower, api = compose_stack.url("flower", 5555), compose_stack.url("api", 8000)
    worker = finished_job["worker"]
    before = _worker_counts(flower, worker)
    folder = tmp_path / "scans"
    folder.mkdir()
    seven = (ROOT / "examples" / "seven.png").read_bytes()
    for n in range(47):
        (folder / f"{n:02d}.png").write_bytes(seven)
    bad = {f"truncated-{n}.png" for n in range(3)}
    for name in bad:  # accepted at submit, they fail decoding in the worker (invalid_input)
        (folder / name).write_bytes(seven[:100])

    # A slow job keeps the worker busy while the whole folder is queued behind it: Celery then
    # delivers one digits job, whose batch takes the other 49 from the queue itself (members).
    blocker = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "input": None,
                                                    "params": {"seconds": 3}}, headers=KEY, timeout=10)
    assert blocker.status_code == 202, blocker.text
    _wait_until_running(api, blocker.json()["id"])
    out = tmp_path / "results.jsonl"
    batch = subprocess.run([sys.executable, "-m", "gpuq.cli", "batch", "digits", str(folder), "--out", str(out),
                            "--concurrency", "50", "--url", api, "--api-key", API_KEY],
                           capture_output=True, text=True, timeout=180)
    assert batch.returncode == 1, batch.stderr  # some jobs failed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 50 and all(line["id"] for line in lines), lines
    expected = {line["id"]: "FAILURE" if line["file"] in bad else "SUCCESS" for line in lines}
    assert {line["id"]: line["status"] for line in lines} == {
        job_id: "failed" if state == "FAILURE" else "succeeded" for job_id, state in expected.items()}
    sizes = [requests.get(f"{api}/v1/jobs/{line['id']}", headers=KEY, timeout=10).json()["timings"]["batch_size"]
             for line in lines if line["file"] not in bad]
    assert min(sizes) > 1, sizes  # every success ran in a batch: all but one job of each batch are members

    tasks = _wait_for_flower_tasks(flower, expected)
    ours = {job_id: tasks[job_id] for job_id in expected}
    assert [t["state"] for t in ours.values()].count("SUCCESS") == 47
    assert [t["state"] for t in ours.values()].count("FAILURE") == 3
    assert {t["name"] for t in ours.values()} == {"gpuq.run:digits"}
    assert {t["worker"] for t in ours.values()} == {worker}
    assert all("invalid_input" in ours[j]["exception"] for j, state in expected.items() if state == "FAILURE")

    # Flower's counts: each job once (the slow job ahead of them is one more success).
    after = _worker_counts(flower, worker)
    assert {kind: after[kind] - before[kind] for kind in after} == {
        "task-received": 51, "task-succeeded": 48, "task-failed": 3}

    # What an operator reads: the failures listed, each once, and any job found by its id.
    _authenticate(browser)
    ARTIFACTS.mkdir(exist_ok=True)
    failed = [job_id for job_id, state in expected.items() if state == "FAILURE"]
    listed = _wait_for_text(browser, f"{flower}/tasks?state=FAILURE", failed)
    assert all(listed.count(job_id) == 1 for job_id in failed), listed
    assert not any(job_id in listed for job_id, state in expected.items() if state == "SUCCESS")
    browser.save_screenshot(str(ARTIFACTS / "flower-batch-failures.png"))
    for job_id in (failed[0], next(j for j, state in expected.items() if state == "SUCCESS")):
        found = _search_tasks(browser, flower, job_id)
        assert found.count(job_id) == 1 and "Showing 1 to 1 of 1 tasks" in found, found
        assert expected[job_id] in found
    detail = _wait_for_text(browser, f"{flower}/task/{failed[0]}", ["FAILURE", "invalid_input", worker])
    assert "gpuq.run:digits" in detail
