"""A job's broker message from the cached template is the one Celery itself builds."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from tasks import publish


def _decoded(message: str) -> dict:
    envelope = json.loads(message)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    envelope["properties"].pop("delivery_tag")  # a fresh uuid per message
    return envelope


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "job_1.a:b-c", "odd 'id' \"quoted\" \\ é"])
def test_message_equals_the_one_celery_builds(celery_app, job_id):
    fast = publish.job_message(celery_app, job_id, "digits", "gpuq.digits")
    reference = publish._build(celery_app, job_id, "digits", "gpuq.digits", "tag")
    assert _decoded(fast) == _decoded(reference)
    assert list(json.loads(fast)) == list(json.loads(reference))  # same members, same order


def test_each_message_has_its_own_id_and_delivery_tag(celery_app):
    first, second = (json.loads(publish.job_message(celery_app, str(uuid.uuid4()), "digits", "gpuq.digits"))
                     for _ in range(2))
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    assert first["properties"]["correlation_id"] == first["headers"]["id"] == first["headers"]["root_id"]


def test_template_is_per_process(celery_app, monkeypatch):
    """The origin header names the sending process: a forked API worker builds its own template."""
    job_id = str(uuid.uuid4())
    here = json.loads(publish.job_message(celery_app, job_id, "digits", "gpuq.digits"))["headers"]["origin"]
    monkeypatch.setattr(publish.os, "getpid", lambda: 424242)
    monkeypatch.setattr("celery.app.amqp.anon_nodename", lambda: "gen424242@host")
    forked = json.loads(publish.job_message(celery_app, job_id, "digits", "gpuq.digits"))["headers"]["origin"]
    assert here != forked == "gen424242@host"


def test_the_message_tells_celery_not_to_store_the_tasks_return_value(celery_app):
    """The worker stores each job's result itself; Celery's own store would cost the lead a round trip."""
    from celery.app.task import Context, get_actual_ignore_result

    headers = json.loads(publish.job_message(celery_app, str(uuid.uuid4()), "digits", "gpuq.digits"))["headers"]
    def stores_results() -> None:
        pass

    task = celery_app.task(name="test.stores_results", ignore_result=False)(stores_results)
    assert get_actual_ignore_result(task, Context(headers)) is True
