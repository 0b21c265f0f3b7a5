"""Redis key names, in one place so that every process agrees on them."""

from __future__ import annotations

PREFIX = "gpuq:"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_input(job_id: str) -> str:
    return f"{PREFIX}input:{job_id}"


def job_events(job_id: str) -> str:
    """Pub/sub channel announcing every change of one job's record."""
    return f"{PREFIX}events:{job_id}"


def job_lock(job_id: str) -> str:
    return f"{PREFIX}lock:{job_id}"


def idempotency(key: str) -> str:
    return f"{PREFIX}idempotency:{key}"


def queued_index(queue: str) -> str:
    """Jobs pushed onto ``queue``, scored by their push's place in it (see ``queue_sequence``)."""
    return f"{PREFIX}queued:{queue}"


def queue_sequence(queue: str) -> str:
    """Counter numbering every push onto ``queue``: the list holds them oldest at its tail."""
    return f"{PREFIX}seq:{queue}"


#: Jobs whose record says running or canceling: what the janitor checks for dead workers.
RUNNING = f"{PREFIX}running"

ANALYZERS = f"{PREFIX}analyzers"
#: When each published analyzer spec expires, by analyzer name (epoch seconds on Redis's clock).
ANALYZER_EXPIRIES = f"{ANALYZERS}:expires"
WORKERS = f"{PREFIX}workers"


def worker(name: str) -> str:
    return f"{PREFIX}worker:{name}"


def metric(name: str) -> str:
    """Hash holding one metric's values, by label set (see tasks/metrics.py)."""
    return f"{PREFIX}metrics:{name}"


#: kombu's Redis transport keeps delivered, unacknowledged messages here (its defaults).
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"


#: Webhook events waiting for their first delivery attempt: "job_id|status" ("" status: progress).
WEBHOOK_OUTBOX = f"{PREFIX}webhooks:outbox"
#: Webhook deliveries waiting to be tried again, scored by when (epoch seconds).
WEBHOOK_RETRIES = f"{PREFIX}webhooks:retries"


def webhook_inflight(dispatcher: str) -> str:
    """Outbox entries one dispatcher (named after its worker) has taken and not yet handled."""
    return f"{PREFIX}webhooks:inflight:{dispatcher}"


def webhook_deliveries(job_id: str) -> str:
    """List of one job's webhook delivery attempts, oldest first (``GET /v1/jobs/{id}/deliveries``)."""
    return f"{PREFIX}deliveries:{job_id}"


#: Moving average of run seconds per analyzer, for the ETA of the job object.
RUN_SECONDS = f"{PREFIX}run_seconds"


def tenant_jobs(tenant: str) -> str:
    """A tenant's jobs, scored by creation time: what ``GET /v1/jobs`` lists."""
    return f"{PREFIX}tenant:{tenant}:jobs"


def tenant_queued(tenant: str) -> str:
    """A tenant's jobs accepted as queued (some may have left that state since): its queued-jobs limit."""
    return f"{PREFIX}tenant:{tenant}:queued"


def rate_window(tenant: str, window: int) -> str:
    """Requests of a tenant in one fixed window of its rate limit."""
    return f"{PREFIX}rate:{tenant}:{window}"


def void_submit(job_id: str) -> str:
    """Set when the API gave up on a submit of this id: its script, if it still reaches Redis, refuses."""
    return f"{PREFIX}void:{job_id}"
