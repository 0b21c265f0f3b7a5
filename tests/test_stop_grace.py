"""One stop grace for the launcher and ``gpuq up``: a running job may run to its hard limit before a kill."""

from __future__ import annotations

import pytest

from gpuq.stop_grace import stop_grace


def test_the_grace_follows_the_job_time_limit_unless_set():
    assert stop_grace({}) == 3630
    assert stop_grace({"GPUQ_JOB_TIME_LIMIT": "120"}) == 150
    assert stop_grace({"GPUQ_JOB_TIME_LIMIT": "120", "GPUQ_STOP_GRACE": "45"}) == 45


@pytest.mark.parametrize("env", [{"GPUQ_STOP_GRACE": "soon"}, {"GPUQ_STOP_GRACE": "0"},
                                 {"GPUQ_STOP_GRACE": "nan"}, {"GPUQ_JOB_TIME_LIMIT": "-5"}])
def test_a_malformed_value_stops_the_process_naming_it(env):
    [name] = env
    with pytest.raises(SystemExit, match=name):
        stop_grace(env)

