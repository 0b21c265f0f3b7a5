"""What a benchmark job carries, built once and used the same way in-process and over HTTP.

A ``Workload`` names an analyzer and a job kind and holds the job inputs.
The raw loop turns them into ``Item``s exactly as the worker's runner does
(uploaded bytes with their sniffed media type, or decoded JSON); the HTTP
clients post the same inputs. Every figure counts *items*: images, frames or
texts, so raw and end-to-end rates compare directly.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_worker.analyzer import Item
from tasks.media import sniff_media_type

__all__ = ["ANALYZERS", "JOB_KINDS", "Workload", "build_workload", "make_texts"]

ANALYZERS = ("digits", "embed", "noop")
JOB_KINDS = ("single", "coarse")
#: Items in one coarse job unless told otherwise: 256 frames (one forward pass of
#: the digits model) or 64 texts (one forward pass of the embed model).
DEFAULT_COARSE_ITEMS = {"digits": 256, "embed": 64}
#: Different inputs cycled through, so a run never sends one text over and over.
_VARIETY = 512

_SEVEN_PNG = Path(__file__).resolve().parent.parent / "examples" / "seven.png"
_WORDS = ("the a model queue worker fast slow GPU request answer result cat dog river city music "
          "question reset password train leaves noon bread eating meal office car horse baby market "
          "fell sharply weather tomorrow rain sunny mountain lake science history kitchen recipe flour").split()


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Sentences of 4 to 40 words: lengths as varied as real traffic, the same on every run."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 40))).capitalize() + "."
            for _ in range(count)]


@dataclass(frozen=True)
class Workload:
    analyzer: str
    kind: str
    items_per_job: int
    #: Job inputs, cycled by job number: upload bytes, or JSON values when ``upload`` is False.
    inputs: tuple[Any, ...]
    upload: bool
    description: str
    #: What one item is, for the printed figures: image, frame, text, job.
    unit: str

    def input_for(self, job_number: int) -> Any:
        return self.inputs[job_number % len(self.inputs)]

    def post_kwargs(self, job_number: int) -> dict[str, Any]:
        """Keyword arguments of ``requests.post`` for one job."""
        value = self.input_for(job_number)
        if self.upload:
            return {"data": {"analyzer": self.analyzer}, "files": {"file": ("input", value)}}
        return {"json": {"analyzer": self.analyzer, "input": value}}

    def item(self, job_number: int) -> Item:
        """The ``Item`` the worker's runner would build for this job."""
        value = self.input_for(job_number)
        if self.upload:
            return Item(job_id=f"raw-{job_number}", data=value, media_type=sniff_media_type(value), params={})
        return Item(job_id=f"raw-{job_number}", data=value, media_type=None, params={})

    def items_in(self, result: Any) -> int:
        """Items a job's result covers; raises if the result does not look like this workload's."""
        if self.analyzer == "noop":
            count = 1 if isinstance(result, dict) and "input" in result else 0
        elif self.kind == "single":
            count = 1 if isinstance(result, dict) and ("digit" in result or "embedding" in result) else 0
        else:
            count = result.get("count", 0) if isinstance(result, dict) else 0
        if count != self.items_per_job:
            raise ValueError(f"expected a result for {self.items_per_job} item(s), got {str(result)[:200]}")
        return count


def build_workload(analyzer: str, kind: str, items_per_job: int | None = None) -> Workload:
    if analyzer not in ANALYZERS or kind not in JOB_KINDS:
        raise ValueError(f"unknown workload {analyzer}/{kind}")
    if kind == "single":
        if analyzer == "digits":
            return Workload(analyzer, kind, 1, (_SEVEN_PNG.read_bytes(),), True,
                            f"one {_SEVEN_PNG.stat().st_size}-byte PNG image per job (examples/seven.png)", "images")
        if analyzer == "embed":
            return Workload(analyzer, kind, 1, tuple(make_texts(_VARIETY)), False,
                            "one sentence (4-40 words) per job", "texts")
        return Workload(analyzer, kind, 1, tuple({"n": n} for n in range(_VARIETY)), False,
                        "a small JSON object per job, returned unchanged", "jobs")
    if analyzer == "noop":
        raise ValueError("noop does no work, so it has no coarse jobs: use --job-kind single")
    count = items_per_job or DEFAULT_COARSE_ITEMS[analyzer]
    if analyzer == "digits":
        return Workload(analyzer, kind, count, (_hdf5_stack(count),), True,
                        f"an HDF5 stack of {count} 8x8 frames per job", "frames")
    texts = make_texts(_VARIETY * 4)
    jobs = tuple(texts[lo:lo + count] for lo in range(0, len(texts) - count + 1, count))
    return Workload(analyzer, kind, count, jobs, False, f"a list of {count} sentences per job", "texts")


def _hdf5_stack(frames: int) -> bytes:
    """An HDF5 file with a (frames, 8, 8) dataset in the digits' own 0..16 scale.

    8x8 frames in that scale skip per-frame resizing in the worker's decoder,
    so the job's time is the model's, as in a real pre-processed stack.
    """
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("frames", data=rng.integers(0, 17, (frames, 8, 8)).astype(np.float32))
    return buffer.getvalue()
