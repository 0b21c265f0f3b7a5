"""bench/http_client.py: the load phase's light client runs the same jobs, to the same results, as requests."""

from __future__ import annotations

import time

import requests

from bench.http_client import ApiConnection
from bench.http_jobs import SessionClient, run_job
from bench.workloads import build_workload


def test_it_runs_single_and_coarse_upload_jobs_to_their_results(api):
    for kind in ("single", "coarse"):
        workload = build_workload("digits", kind)
        connection = ApiConnection(api, workload)
        try:
            outcomes = [run_job(connection, workload, n) for n in range(3)]
        finally:
            connection.close()
        assert [o.job["status"] for o in outcomes] == ["succeeded"] * 3
        assert [o.items for o in outcomes] == [workload.items_per_job] * 3
        assert all(0 < o.submit_s <= o.total_s for o in outcomes)


def test_a_job_it_sends_is_the_job_requests_sends(api):
    workload = build_workload("digits", "coarse")
    light = run_job(ApiConnection(api, workload), workload, 5).job
    with requests.Session() as session:
        heavy = run_job(SessionClient(session, api, workload), workload, 5).job
    assert light["result"] == heavy["result"] and light["result"]["count"] == 256


def test_it_opens_a_new_connection_once_the_server_closed_an_idle_one(api):
    workload = build_workload("digits", "single")
    connection = ApiConnection(api, workload)
    try:
        run_job(connection, workload, 0)
        first = connection._connection
        run_job(connection, workload, 1)
        assert connection._connection is first  # kept alive between jobs
        time.sleep(6)  # past gunicorn.conf.py's keepalive (5 s): the API closes the idle connection
        assert run_job(connection, workload, 2).job["status"] == "succeeded"
        assert connection._connection is not first
    finally:
        connection.close()
