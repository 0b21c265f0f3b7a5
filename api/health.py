"""Liveness, readiness and the analyzer listing: what operators and clients ask of the fleet."""

from __future__ import annotations

from flask import Blueprint

from api.services import services
from tasks import catalog

__all__ = ["health"]

health = Blueprint("health", __name__)

_SERVING_STATES = ("ready", "busy")


@health.get("/healthz")
def healthz():
    return {"status": "ok"}


@health.get("/readyz")
def readyz():
    svc = services()
    try:
        svc.redis.ping()
    except Exception as error:  # any failure to reach Redis means not ready
        return {"ready": False, "reasons": [f"redis unreachable: {error.__class__.__name__}"]}, 503
    specs = svc.analyzers.all(refresh=True)
    workers = catalog.live_workers(svc.redis)
    serving = _workers_by_analyzer(workers)
    reasons = [f"no live worker serves {name!r}" for name in sorted(specs) if not serving.get(name)]
    if not specs:
        reasons.append("no analyzer served now: no live worker has published its analyzers")
    # Both directions, since routing gives analyzers to particular workers:
    # which workers serve an analyzer, and what each worker serves.
    body = {"ready": not reasons, "reasons": reasons,
            "analyzers": {name: [w["name"] for w in serving.get(name, [])] for name in sorted(specs)},
            "workers": [{"name": w["name"], "device": w.get("device"), "state": w.get("state"),
                         "analyzers": w.get("analyzers", []),
                         **({"unhealthy_because": w["unhealthy_because"]} if w.get("unhealthy_because") else {})}
                        for w in workers]}
    return body, 200 if not reasons else 503


@health.get("/v1/analyzers")
def list_analyzers():
    svc = services()
    serving = _workers_by_analyzer(catalog.live_workers(svc.redis))
    return {"analyzers": [
        {**spec, "workers": [{"name": w["name"], "device": w["device"], "state": w["state"],
                              "weights_sha256": (w.get("weights_sha256") or {}).get(name)}
                             for w in serving.get(name, [])]}
        for name, spec in sorted(svc.analyzers.all(refresh=True).items())
    ]}


def _workers_by_analyzer(workers: list[dict]) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for worker in workers:
        if worker.get("state") in _SERVING_STATES:
            for name in worker.get("analyzers", []):
                by_name.setdefault(name, []).append(worker)
    return by_name
