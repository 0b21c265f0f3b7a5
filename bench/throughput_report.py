"""The final table of bench/throughput.py and its verdict on each of the targets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.cpu_usage import OTHERS
from bench.drain import DrainResult
from bench.load import LoadResult
from bench.overhead import GpuqOverhead, Latencies
from bench.raw_model import RawResult
from bench.workloads import Workload

__all__ = ["Results", "Verdict", "as_json", "print_report", "verdicts"]

MET, NOT_MET, NOT_MEASURED = "met", "NOT MET", "not measured here"
#: Model time per job from which a job counts as coarse.
COARSE_MS = 5.0
#: Cores used by others during a measurement above which the report says the machine was busy.
_BUSY_MACHINE = 0.25
#: Jobs finished in a window below which its rate moves a lot with one job more or less.
_STEADY_JOBS = 20


@dataclass
class Results:
    workload: Workload
    device: str
    clients: int
    cores: int
    #: Which cores the model and the rest of the stack ran on (``bench.core_layout``).
    layout: str = ""
    #: (a) over all its windows, and over those that took turns with (b) and with (c).
    raw: RawResult | None = None
    raw_beside_on: RawResult | None = None
    raw_beside_off: RawResult | None = None
    batching_on: LoadResult | None = None
    batching_off: LoadResult | None = None
    #: Each round's end-to-end over raw, (b) and (c).
    round_ratios_on: list[float] = field(default_factory=list)
    round_ratios_off: list[float] = field(default_factory=list)
    overhead: GpuqOverhead | None = None
    celery: Latencies | None = None
    drains: list[DrainResult] = field(default_factory=list)

    @property
    def e2e_over_raw(self) -> float | None:
        """(b) over the raw windows that took turns with it."""
        raw = self.raw_beside_on or self.raw
        return _ratio(self.batching_on and self.batching_on.items_per_s, raw and raw.items_per_s)

    @property
    def batching_gain(self) -> float | None:
        """(b) over (c), each first set against the raw windows beside it (when it had its own)."""
        on = _ratio(self.batching_on and self.batching_on.items_per_s,
                    self.raw_beside_on and self.raw_beside_on.items_per_s)
        off = _ratio(self.batching_off and self.batching_off.items_per_s,
                     self.raw_beside_off and self.raw_beside_off.items_per_s)
        if on is not None and off is not None:
            return on / off
        return _ratio(self.batching_on and self.batching_on.items_per_s,
                      self.batching_off and self.batching_off.items_per_s)

    @property
    def overhead_ratio(self) -> float | None:
        return _ratio(self.overhead and self.overhead.total.p50, self.celery and self.celery.p50)

    def drain_with(self, batching: bool) -> DrainResult | None:
        return next((d for d in self.drains if d.batching == batching), None)

    def cpu_readings(self) -> list[dict[str, float]]:
        return [part.cpu for part in (self.raw, self.batching_on, self.batching_off) if part is not None]

    def errors(self) -> list[str]:
        found = [*(self.batching_on.errors if self.batching_on else []),
                 *(self.batching_off.errors if self.batching_off else [])]
        for drain in self.drains:
            found += drain.errors
        return found


@dataclass(frozen=True)
class Verdict:
    target: str
    figure: str
    state: str
    note: str = ""


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def _judge(value: float | None, least: float | None = None, most: float | None = None) -> str:
    if value is None:
        return NOT_MEASURED
    ok = (least is None or value >= least) and (most is None or value <= most)
    return MET if ok else NOT_MET


def _figure(value: float | None, suffix: str = "") -> str:
    # Three significant digits: a no-op's b/a is tiny, and must not print as 0.00.
    return "-" if value is None else f"{value:.3g}{suffix}"


def verdicts(results: Results) -> list[Verdict]:
    workload, on_gpu = results.workload, results.device == "cuda"
    has_model = workload.analyzer != "noop"
    single, coarse = workload.kind == "single", workload.kind == "coarse"
    out: list[Verdict] = []

    ratio = results.e2e_over_raw if has_model and coarse else None
    note = "" if ratio is not None else "needs a model analyzer and --job-kind coarse"
    state = _judge(ratio, least=0.9)
    if ratio is not None and results.raw.ms_per_job < COARSE_MS:
        state = NOT_MEASURED
        note = (f"jobs hold {results.raw.ms_per_job:.1f} ms of model time, under the {COARSE_MS:g} ms "
                "of a coarse job: raise --items-per-job")
    elif ratio is not None:
        note = f"{results.raw.ms_per_job:.1f} ms of model time per job" + (
            f"; {results.layout}" if results.layout and results.device == "cpu" else "")
    out.append(Verdict("end-to-end / raw, coarse jobs >= 0.9", _figure(ratio), state, note))

    ratio = results.e2e_over_raw if has_model and single else None
    out.append(_gpu_verdict("end-to-end / raw, single-item jobs, batching on, GPU >= 0.6", ratio, 0.6, on_gpu,
                            "needs a model analyzer and --job-kind single"))
    ratio = results.batching_gain if has_model and single else None
    out.append(_gpu_verdict("batching / no batching, single-item jobs, GPU >= 3", ratio, 3.0, on_gpu,
                            "needs a model analyzer and --job-kind single"))

    ratio = results.overhead_ratio
    out.append(Verdict("no-op job overhead p50 <= 2 x plain Celery round trip", _figure(ratio, "x"),
                       _judge(ratio, most=2.0), "" if ratio is not None else "run without --skip-overhead"))

    drained = results.drain_with(batching=True)
    rate = drained.jobs_per_s if drained else None
    note = "run without --skip-drain" if drained is None else f"{results.cores}-core machine"
    if drained is not None and results.cores != 2:
        note += " (the target is set for 2 cores)"
    out.append(Verdict("one worker drains >= 1,000 no-op jobs/s, batching on",
                       "-" if rate is None else f"{rate:,.0f} jobs/s", _judge(rate, least=1000), note))
    return out


def _gpu_verdict(target: str, ratio: float | None, least: float, on_gpu: bool, missing: str) -> Verdict:
    if ratio is None:
        return Verdict(target, "-", NOT_MEASURED, missing)
    if not on_gpu:
        return Verdict(target, f"{ratio:.2f} on the CPU", NOT_MEASURED, "a GPU target: run with --device cuda")
    return Verdict(target, f"{ratio:.2f}", _judge(ratio, least=least))


def print_report(results: Results) -> None:
    rows = _rows(results)
    print()
    print("=" * 100)
    print(f"gpuq throughput: analyzer {results.workload.analyzer}, device {results.device}, "
          f"job kind {results.workload.kind} ({results.workload.description}), {results.clients} clients, "
          f"{results.cores} cores" + (f"; {results.layout}" if results.layout else ""))
    print("=" * 100)
    label_width = max(len(label) for label, _, _ in rows)
    figure_width = max(len(figure) for _, figure, _ in rows)
    for label, figure, details in rows:
        print(f"{label:<{label_width}}  {figure:>{figure_width}}  {details[0] if details else ''}")
        for line in details[1:]:
            print(f"{'':<{label_width}}  {'':>{figure_width}}  {line}")
    few = [load.jobs for load in (results.batching_on, results.batching_off) if load and load.jobs < _STEADY_JOBS]
    if few:
        print(f"\nnote: only {min(few)} jobs finished inside a measuring window; one job more or less moves "
              f"that rate by {100 / max(1, min(few)):.0f}% or more: raise --seconds for a steady figure")
    others = max([cpu.get(OTHERS, 0.0) for cpu in results.cpu_readings()], default=0.0)
    if others > _BUSY_MACHINE:
        print(f"\nnote: other processes on this machine used up to {others:.2f} cores during the measurements; "
              "every figure above is lower than an idle machine gives")
    print()
    print("targets:")
    for v in verdicts(results):
        print(f"  [{v.state:^17}] {v.target}: {v.figure}" + (f"  ({v.note})" if v.note else ""))
    errors = results.errors()
    if errors:
        print()
        print(f"!!! {len(errors)} ERROR(S): jobs failed or answers were wrong; the figures above are suspect !!!")
        for error in errors[:10]:
            print(f"  {error}")


def _rows(results: Results) -> list[tuple[str, str, list[str]]]:
    """(label, figure, detail lines) for each measured figure, in the order of the targets."""
    unit = results.workload.unit
    rows: list[tuple[str, str, list[str]]] = []
    if results.raw:
        r = results.raw
        details = [f"{r.items_per_call} {unit} per predict call, {r.ms_per_call:.2f} ms per call, "
                   f"{r.ms_per_job:.3f} ms per job", _cores(r.cpu)]
        beside = [f"{label} {raw.items_per_s:,.0f}" for label, raw in
                  (("beside (b)", results.raw_beside_on), ("beside (c)", results.raw_beside_off)) if raw]
        if beside:
            details.append(f"in windows taking turns with (b) and (c): {', '.join(beside)} {unit}/s")
        rows.append(("(a) raw model, in-process", f"{r.items_per_s:,.0f} {unit}/s", details))
    for label, load in (("(b) end to end, batching on", results.batching_on),
                        ("(c) end to end, batching off", results.batching_off)):
        if load:
            rows.append((label, f"{load.items_per_s:,.0f} {unit}/s",
                         [f"{load.jobs} jobs in {load.window_s:.1f} s, "
                          f"mean batch size {_figure(load.mean_batch_size)}, "
                          f"worker in predict {_percent(load.predict_share)}, "
                          f"job latency p50 {load.latency_p50_ms:.1f} ms, p99 {load.latency_p99_ms:.1f} ms",
                          _cores(load.cpu)]))
    rows.append(("b/a", _figure(results.e2e_over_raw),
                 ["end to end over the raw model" + _rounds(results.round_ratios_on)]))
    normalised = results.raw_beside_on is not None and results.raw_beside_off is not None
    rows.append(("b/c", _figure(results.batching_gain),
                 ["batching on over batching off" + (", each over the raw windows beside it" if normalised else "")
                  + _rounds(results.round_ratios_off, "c/a")]))
    if results.overhead:
        o = results.overhead
        rows.append(("no-op job, POST to result read", _p50_p99(o.total),
                     [f"{o.jobs} jobs one at a time; 202 answered {_p50_p99(o.submit)}",
                      f"record: queued_ms {_p50_p99(o.queued)}, run_ms {_p50_p99(o.run)}"]))
    if results.celery:
        rows.append(("plain Celery round trip", _p50_p99(results.celery),
                     ["apply_async().get() one at a time, same Redis"]))
    if results.overhead or results.celery:
        rows.append(("overhead p50, gpuq / Celery", _figure(results.overhead_ratio, "x"), []))
    for d in results.drains:
        rows.append((f"drain, batching {'on' if d.batching else 'off'}", f"{d.jobs_per_s:,.0f} jobs/s",
                     [f"{d.succeeded}/{d.jobs} succeeded with results stored; {d.span_s:.2f} s first start to "
                      f"last finish, {d.wall_from_ready_s:.2f} s from worker ready; "
                      f"mean batch size {_figure(d.mean_batch_size)}"]))
    return rows


def _rounds(ratios: list[float], name: str = "") -> str:
    if len(ratios) < 2:
        return ""
    return f"; {name + ' ' if name else ''}per round {', '.join(f'{r:.3g}' for r in ratios)}"


def _cores(cpu: dict[str, float]) -> str:
    return "cores busy: " + ", ".join(f"{part} {used:.2f}" for part, used in cpu.items())


def _p50_p99(latencies: Latencies) -> str:
    return f"p50 {latencies.p50:.2f} ms, p99 {latencies.p99:.2f} ms"


def as_json(results: Results) -> dict[str, Any]:
    data = asdict(results)
    data["workload"] = {k: v for k, v in data["workload"].items() if k != "inputs"}
    for phase in ("batching_on", "batching_off"):
        if data[phase]:
            data[phase].pop("latencies_ms")  # every job's: the percentiles beside them say it
    data["ratios"] = {"e2e_over_raw": results.e2e_over_raw, "batching_on_over_off": results.batching_gain,
                      "overhead_p50_over_celery": results.overhead_ratio}
    data["targets"] = [asdict(v) for v in verdicts(results)]
    data["errors"] = results.errors()
    return data


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f} %"
