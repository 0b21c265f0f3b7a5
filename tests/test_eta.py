"""Queued jobs' ETA (tasks/eta.py): each job ahead goes to the worker that comes free soonest."""

from __future__ import annotations

import pytest

from tasks.eta import fraction_of, queued_seconds


def test_an_idle_worker_takes_the_jobs_while_another_is_busy_with_a_long_one():
    # One worker idle, one busy for 100 s more; jobs of 1 s: the idle one takes positions 0, 1, 2 in turn.
    assert [queued_seconds(1.0, position, [0.0, 100.0]) for position in range(4)] == [1.0, 2.0, 3.0, 4.0]


def test_the_first_in_line_waits_for_what_is_left_of_the_running_jobs():
    assert queued_seconds(2.0, 0, [0.5, 3.0]) == 2.5
    assert queued_seconds(2.0, 1, [0.5, 3.0]) == 4.5  # the first worker again (free at 2.5), not the second (3)


@pytest.mark.parametrize("free", [[0.0], [0.3, 0.1, 7.0], [5.0, 5.0]])
def test_the_eta_grows_with_the_position(free):
    etas = [queued_seconds(0.7, position, free) for position in range(50)]
    assert etas == sorted(etas) and len(set(etas)) > 1


def test_a_deep_queue_is_estimated_without_working_through_every_job():
    assert queued_seconds(2.0, 1_000_000, [0.0, 0.0]) == pytest.approx(1_000_002.0)


def test_only_a_reported_number_is_a_fraction():
    assert fraction_of({"fraction": 0.25}) == 0.25
    assert [fraction_of(p) for p in (None, {}, {"fraction": "half"}, {"fraction": True}, [0.5])] == [None] * 5
