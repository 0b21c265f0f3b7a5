"""Flower, as the compose file starts it, seen in a real headless Chromium: the worker and a finished job.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them). Screenshots land in ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import base64
import os
import shutil
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
