"""``rediss://``: a job goes through a real redis-server that speaks only TLS.

Certificates are made here with the ``openssl`` command; the test is skipped
when it or a TLS-capable redis-server is missing (and fails under CI=true).
The URL carries what redis-py and Celery need: ``ssl_cert_reqs`` and
``ssl_ca_certs`` (and ``ssl_certfile``/``ssl_keyfile`` for client certificates).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_lib
import requests

from gpuq.redis_server import find_redis_server, free_port
from tasks.settings import Settings
from tests.stack import base_env, start_api, start_workers, wait_for_status, wait_for_workers

PASSWORD = "tls-test-password"


def _skip(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _certificates(directory: Path) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        _skip("openssl is not installed")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gpuq test CA",
        "-keyout", str(paths["ca-key"]), "-out", str(paths["ca"]))
    csr = directory / "server.csr"
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(paths["server-key"]),
        "-out", str(csr))
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(paths["ca"]), "-CAkey", str(paths["ca-key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(paths["server"]))
    return paths


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls-redis")
    certs = _certificates(directory)
    binary = find_redis_server()
    port = free_port()
    log = directory / "redis.log"
    with open(log, "w") as sink:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [binary, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs["server"]),
             "--tls-key-file", str(certs["server-key"]), "--tls-ca-cert-file", str(certs["ca"]),
             "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
             "--dir", str(directory)],
            stdout=sink, stderr=subprocess.STDOUT)
    url = (f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required"
           f"&ssl_ca_certs={quote(str(certs['ca']))}")
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            _skip(f"redis-server could not serve TLS (built without it?): {log.read_text()[-500:]}")
        try:
            redis_lib.Redis.from_url(url, socket_timeout=1).ping()
            break
        except redis_lib.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield url, port, certs
    process.terminate()
    process.wait(timeout=10)


def test_gpuq_connects_over_tls_and_checks_the_certificate(tls_redis, tmp_path):
    url, port, _ = tls_redis
    assert Settings(redis_url=url).connect_redis(socket_timeout=2).ping()
    with pytest.raises(redis_lib.ConnectionError):  # plain text to the TLS port
        redis_lib.Redis(port=port, password=PASSWORD, socket_timeout=2).ping()
    other_ca = tmp_path / "other"
    other_ca.mkdir()
    wrong = url.split("&ssl_ca_certs=")[0] + "&ssl_ca_certs=" + quote(str(_certificates(other_ca)["ca"]))
    with pytest.raises(redis_lib.ConnectionError):  # a server the CA did not sign is refused
        redis_lib.Redis.from_url(wrong, socket_timeout=2).ping()


@pytest.mark.slow
def test_a_job_runs_end_to_end_over_rediss(tls_redis, tmp_path):
    url, _, _ = tls_redis
    env = base_env(url, GPUQ_ANALYZERS="tests.fixtures.analyzers:Echo")
    workers = start_workers(env, tmp_path)
    api = None
    try:
        wait_for_workers(url, {"echo"}, workers)
        api, base = start_api(env, tmp_path, workers=1)
        job = requests.post(f"{base}/v1/jobs", json={"analyzer": "echo", "input": {"over": "tls"}}, timeout=10)
        assert job.status_code == 202, job.text
        done = wait_for_status(base, job.json()["id"], {"succeeded", "failed"}, timeout=60)
        assert done["status"] == "succeeded", done
        assert done["result"]["echo"] == {"over": "tls"}
    finally:
        if api is not None:
            api.stop()
        workers.stop(timeout=30)
