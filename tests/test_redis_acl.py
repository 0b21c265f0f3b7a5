"""Redis with an ACL user instead of the default user's password: gpuq's URL names the user."""

from __future__ import annotations

import pytest
import redis as redis_lib

from gpuq.redis_server import RedisServer
from tasks.jobs import JobStore
from tasks.settings import Settings
from tasks.submission import submit_job


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("acl-redis")).start()
    admin = redis_lib.Redis.from_url(server.url)
    # A user of its own for gpuq; the default user (no name, no password) is switched off.
    admin.execute_command("ACL", "SETUSER", "gpuq", "on", ">acl-test-password", "~*", "&*", "+@all", "-@dangerous",
                          "+info", "+client")
    admin.execute_command("ACL", "SETUSER", "default", "off")
    admin.close()
    yield server
    server.stop()


def test_gpuq_works_as_an_acl_user_and_nobody_else_gets_in(acl_redis, celery_app):
    base = acl_redis.url.split("//", 1)[1]
    with pytest.raises((redis_lib.AuthenticationError, redis_lib.ResponseError)):
        redis_lib.Redis.from_url(acl_redis.url).ping()
    with pytest.raises(redis_lib.AuthenticationError):
        redis_lib.Redis.from_url(f"redis://gpuq:wrong@{base}").ping()
    client = Settings(redis_url=f"redis://gpuq:acl-test-password@{base}").connect_redis()
    store = JobStore(client, result_ttl=100, tombstone_ttl=100, input_ttl=100)
    accepted = submit_job(store, celery_app, analyzer="acltest", input_bytes=b"{}",
                          input_media_type="application/json", params={}, tenant="team-a", tenant_max_queued=5)
    assert store.get(accepted.job_id).tenant == "team-a"
    with pytest.raises(redis_lib.exceptions.NoPermissionError):
        client.flushall()  # -@dangerous: the service's user cannot wipe Redis
