"""The analyzer interface: what a model must provide to be served by gpuq.

An analyzer is a plain class. The worker calls ``setup(device)`` once per
process, before it takes its first job, and ``predict(batch)`` for every batch
of jobs. Class attributes describe it to the API (which never imports this
code): the API reads them from the catalog the worker publishes in Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["Analyzer", "AnalyzerError", "InvalidInput", "Item", "OutOfMemory"]

ProgressFn = Callable[[int, int, str], None]


class AnalyzerError(Exception):
    """Raised by an analyzer when a job fails for a reason it can name.

    ``code`` ends up in the job's ``error.code``; the message is shown to the
    client as it is, so it must not carry secrets or tracebacks.
    """

    code = "analyzer_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidInput(AnalyzerError):
    """Raised when the input passed the API's checks but cannot be decoded."""

    code = "invalid_input"


class OutOfMemory(AnalyzerError):
    """Raised when the device ran out of memory.

    The worker runs the batch again in smaller passes (``items_per_pass``
    halved), then in smaller batches; a job that does not fit alone fails with it.
    """

    code = "out_of_memory"


@dataclass
class Item:
    """One job's input, as ``predict`` sees it.

    ``data`` is the uploaded bytes (``media_type`` then names their sniffed
    type) or the decoded JSON ``input`` (``media_type`` is ``None``).
    """

    job_id: str
    data: Any
    media_type: str | None
    params: dict[str, Any] = field(default_factory=dict)
    report_progress: ProgressFn = lambda done, total, stage: None

    def progress(self, done: int, total: int, stage: str = "") -> None:
        """Tell the client how far this job has got (throttled by the worker)."""
        self.report_progress(done, total, stage)


class Analyzer:
    """Base class for models served by gpuq. Override ``setup`` and ``predict``."""

    #: Unique name; also the queue's suffix and the ``analyzer`` field of a job.
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    #: SHA-256 (hex) of the weights this instance loaded; ``setup`` sets it, with
    #: ``gpu_worker.weights.file_sha256`` or ``state_dict_sha256``. ``None``: no weights.
    weights_sha256: str | None = None
    #: Reduced precision ``predict`` may run the model in on a CUDA device:
    #: "bfloat16", "float16", or ``None`` (float32 only, the default). A declaration:
    #: ``gpu_worker.inference.amp_dtype`` turns it into the dtype to autocast to,
    #: which is ``None`` on a CPU and under ``GPUQ_PRECISION=fp32``.
    autocast_dtype: ClassVar[str | None] = None
    #: Sniffed media types accepted as an uploaded ``file`` (empty: none).
    media_types: ClassVar[tuple[str, ...]] = ()
    #: JSON Schema of the JSON ``input`` field (``None``: JSON input refused).
    input_schema: ClassVar[dict[str, Any] | None] = None
    #: JSON Schema of ``params`` (an object).
    params_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}
    #: Largest accepted upload, in bytes.
    max_input_bytes: ClassVar[int] = 20 * 1024 * 1024
    #: Batching limits: the most jobs in one ``predict`` and how long to wait to fill it.
    max_batch_size: ClassVar[int] = 1
    max_wait_ms: ClassVar[int] = 0
    #: Items (frames, texts) per forward pass, for an analyzer that runs its batch in passes of
    #: a bounded size; ``None``: one pass a batch. When the device runs out of memory the worker
    #: halves it on the instance (``gpu_worker.isolation``), so ``predict`` must read it each time.
    items_per_pass: int | None = None
    #: Jobs waiting in this analyzer's queue before new ones get 429 (``GPUQ_QUEUE_LIMITS`` overrides).
    max_queue_depth: ClassVar[int] = 10_000

    def setup(self, device: str) -> None:
        """Load the model onto ``device`` ("cpu" or "cuda:0"); called once per process.

        Set ``self.weights_sha256`` here, so every result names the weights that made it.
        """

    def predict(self, batch: list[Item]) -> list[Any]:
        """Return one JSON-serialisable result per item, in order.

        Raise ``AnalyzerError`` (or a subclass) to fail the jobs with a code.
        """
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """What made a result: stored with every job this analyzer completes."""
        return {"analyzer": self.name, "version": self.version, "weights_sha256": self.weights_sha256}

    @classmethod
    def spec(cls) -> dict[str, Any]:
        """The JSON description the worker publishes for the API."""
        return {
            "name": cls.name,
            "description": cls.description,
            "version": cls.version,
            "media_types": list(cls.media_types),
            "input_schema": cls.input_schema,
            "params_schema": cls.params_schema,
            "max_input_bytes": cls.max_input_bytes,
            "batching": {"max_batch_size": cls.max_batch_size, "max_wait_ms": cls.max_wait_ms},
            "max_queue_depth": cls.max_queue_depth,
        }
