"""Throughput in one run: the raw model, the whole stack with and without batching, and gpuq's own cost.

For one analyzer on one device it prints:

(a) the raw model's items/s: the analyzer's ``predict`` in a tight loop in
    this process, on the same device: the limit;
(b) end-to-end items/s: N concurrent clients, each posting a job and
    long-polling its result, through the API, Redis and one worker;
(c) the same with the worker's batching off (``GPUQ_BATCHING=off``);
then b/a and b/c. (a) is measured in windows that take turns with those of
(b) and of (c) (``--rounds``), the stack idle meanwhile, and each of (b) and
(c) is set against its own raw windows: a shared machine's speed drifts
within a run, and a ratio of figures taken a minute apart measures the drift.
Then the per-job overhead of a no-op job (submit to result, p50/p99, one
client) against a plain Celery round trip on the same Redis; and how many
queued no-op jobs one worker drains per second. On a CPU the model (the raw
loop and the workers' model processes) runs on a core of its own, the rest on
the others (``bench/core_layout.py``; ``--shared-cores`` to share them all). Items are
images, frames or texts, the same unit in (a), (b) and (c). It ends with
each of the targets, met or not, or not measurable in this run.

It starts and stops its own Redis (a free port), API and workers, and
nothing else.

    PYTHONPATH=. .venv/bin/python bench/throughput.py [--analyzer digits|embed|noop] [--device cpu|cuda]
        [--job-kind single|coarse] [--clients 32] [--seconds 20] [--rounds 3] [--shared-cores]
        [--skip-overhead] [--skip-drain]
        [--drain-jobs 5000] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_stack import BenchStack  # noqa: E402
from bench.core_layout import CoreLayout  # noqa: E402
from bench.cpu_usage import BENCH_PROCESS  # noqa: E402
from bench.drain import drain  # noqa: E402
from bench.load import LoadResult, combine_loads, run_load  # noqa: E402
from bench.overhead import interleaved_round_trips  # noqa: E402
from bench.raw_model import RawModel, RawResult, combine  # noqa: E402
from bench.throughput_report import Results, as_json, print_report  # noqa: E402
from bench.workloads import ANALYZERS, JOB_KINDS, Workload, build_workload  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analyzer", choices=ANALYZERS, default="digits")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the raw loop uses cuda:0 and the worker GPU 0")
    parser.add_argument("--job-kind", choices=JOB_KINDS, default="single",
                        help="single: one image or text per job; coarse: a stack of frames or a list of texts")
    parser.add_argument("--items-per-job", type=int, default=None,
                        help="frames or texts in a coarse job (default 256 frames, 64 texts)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in (b) and (c)")
    parser.add_argument("--seconds", type=float, default=20, help="measuring time of (a), (b) and (c) each")
    parser.add_argument("--rounds", type=int, default=3,
                        help="windows --seconds is split into: (a) and (b), then (a) and (c), take turns")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of load before (b) and (c) measure (default: a third of --seconds, 1-5); "
                             "later rounds warm up for at most 1 s")
    parser.add_argument("--shared-cores", action="store_true",
                        help="on a CPU, let every part share every core (default: the model gets a core of "
                             "its own, as it gets a device on a GPU; see bench/core_layout.py)")
    parser.add_argument("--skip-overhead", action="store_true", help="leave out the no-op overhead phase")
    parser.add_argument("--overhead-jobs", type=int, default=300, help="jobs timed in the overhead phase")
    parser.add_argument("--skip-drain", action="store_true", help="leave out the drain phase")
    parser.add_argument("--drain-jobs", type=int, default=5000, help="no-op jobs queued ahead for the drain")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if min(args.clients, args.rounds, args.drain_jobs, args.overhead_jobs) < 1 or args.seconds <= 0:
        parser.error("--clients, --seconds, --rounds, --drain-jobs and --overhead-jobs must be positive")
    if args.warmup is None:
        args.warmup = min(5.0, max(1.0, args.seconds / 3))
    return args


def _exit_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the stack


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    try:
        workload = build_workload(args.analyzer, args.job_kind, args.items_per_job)
    except ValueError as error:
        print(f"throughput: {error}", file=sys.stderr)
        return 2
    results = Results(workload=workload, device=args.device, clients=args.clients, cores=os.cpu_count() or 0)
    print(f"workload: {workload.analyzer}, {workload.description}; device {args.device}; "
          f"{args.clients} clients; {args.seconds:g} s per phase in {args.rounds} round(s), "
          f"after {args.warmup:.3g} s of warm-up", flush=True)

    layout = CoreLayout.choose(args.device, shared=args.shared_cores)
    results.layout = layout.describe()
    print(f"cores: {results.layout}", flush=True)
    layout.use_host_cores()  # Redis, the API and the workers' main processes start from here
    with layout.on_model_cores():
        raw_model = RawModel(workload, "cuda:0" if args.device == "cuda" else "cpu", clients=args.clients)
    stack = BenchStack(Path(tempfile.mkdtemp(prefix="gpuq-bench-throughput-")), args.device,
                       worker_env=layout.worker_env())
    # This process submits drain jobs and Celery baseline tasks itself: both read the broker URL from here.
    os.environ["GPUQ_REDIS_URL"] = stack.redis_url
    try:
        stack.start_api(args.clients)
        print(f"stack: Redis {stack.redis_url}, API {stack.url} ({stack.api_shape}); logs in {stack.directory}",
              flush=True)
        results.raw_beside_on, results.batching_on, results.round_ratios_on = _load_phase(
            stack, raw_model, layout, workload, args, batching=True)
        results.raw_beside_off, results.batching_off, results.round_ratios_off = _load_phase(
            stack, raw_model, layout, workload, args, batching=False)
        results.raw = combine([results.raw_beside_on, results.raw_beside_off])
        raw_model.close()
        if not args.skip_overhead:
            _overhead_phase(stack, results, args)
        if not args.skip_drain:
            for batching in (True, False):
                result = drain(stack, args.drain_jobs, batching=batching)
                results.drains.append(result)
                print(f"drain, batching {'on' if batching else 'off'}: {result.jobs_per_s:,.0f} jobs/s "
                      f"({result.succeeded}/{result.jobs} succeeded)", flush=True)
    except BaseException as error:
        print(f"\nstopped by {type(error).__name__}: stopping the stack", file=sys.stderr, flush=True)
        stack.close(interrupted=True)
        raise
    stack.close()

    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(as_json(results), indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 1 if results.errors() else 0


def _load_phase(stack: BenchStack, raw_model: RawModel, layout: CoreLayout, workload: Workload,
                args: argparse.Namespace, *, batching: bool) -> tuple[RawResult, LoadResult, list[float]]:
    """(b) or (c) in ``args.rounds`` windows, each after a window of (a): both combined, and b/a of each round."""
    name = "b" if batching else "c"
    label = f"({name}) end to end, batching {'on' if batching else 'off'}"
    window = args.seconds / args.rounds
    raws: list[RawResult] = []
    loads: list[LoadResult] = []
    workers = stack.start_workers(workload.analyzer, batching=batching)
    try:
        for round_number in range(args.rounds):
            # The worker waits idle on an empty queue meanwhile: the raw loop has the device to itself.
            with layout.on_model_cores():
                raws.append(raw_model.measure(window, warmup=min(1.0, window / 3)))
            warmup = args.warmup if round_number == 0 else min(1.0, args.warmup)
            loads.append(run_load(stack.url, workload, clients=args.clients, warmup=warmup, seconds=window,
                                  meter=stack.cpu_meter(workers)))
            print(f"  round {round_number + 1}: (a) {raws[-1].items_per_s:,.0f}, ({name}) "
                  f"{loads[-1].items_per_s:,.0f} {workload.unit}/s, worker in predict "
                  f"{loads[-1].predict_share:.0%}, cores busy: {_cores_in_short(loads[-1].cpu)}", flush=True)
    finally:
        stack.stop(workers)
    raw, result = combine(raws), combine_loads(loads)
    ratios = [load.items_per_s / r.items_per_s for r, load in zip(raws, loads, strict=True)]
    print(f"{label}: {result.items_per_s:,.0f} {workload.unit}/s, against (a) {raw.items_per_s:,.0f} beside it",
          flush=True)
    busy_clients = result.cpu.get(BENCH_PROCESS, 0.0)
    if busy_clients > 0.7:
        print(f"  note: the clients used {busy_clients:.2f} cores; on this machine they may limit the figure",
              flush=True)
    return raw, result, ratios


def _cores_in_short(cpu: dict[str, float]) -> str:
    """Cores each part used, each part named by its first word, for a round's line."""
    return ", ".join(f"{part.split(' ')[0]} {used:.2f}" for part, used in cpu.items())


def _overhead_phase(stack: BenchStack, results: Results, args: argparse.Namespace) -> None:
    noop = build_workload("noop", "single")
    warmup = max(10, args.overhead_jobs // 10)
    from bench import plain_celery  # reads GPUQ_REDIS_URL at import

    workers = stack.start_workers("noop", batching=True)
    baseline = stack.start_plain_celery(plain_celery.QUEUE)
    try:
        results.overhead, results.celery = interleaved_round_trips(stack.url, noop, plain_celery.echo,
                                                                   args.overhead_jobs, warmup)
    finally:
        stack.stop(baseline)
        stack.stop(workers)
    print(f"no-op job overhead: p50 {results.overhead.total.p50:.2f} ms", flush=True)
    print(f"plain Celery round trip: p50 {results.celery.p50:.2f} ms", flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the stack is already stopped: no traceback for a Ctrl-C
        sys.exit(130)
