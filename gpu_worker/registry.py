"""Which analyzer classes a worker serves: built-ins by name, others by import path.

``GPUQ_ANALYZERS`` is a comma-separated list of built-in names (``digits``) and
import paths (``mypkg.models:Segmenter``). Every class is checked here, at
start-up, so a broken one stops the worker with a clear message.

The classes are imported in the worker's main process, which then forks the
process that loads the models. CUDA cannot be used in a child forked after it
was initialised, so a module that initialises CUDA when imported is refused
here, by name, rather than leaving every model process to fail obscurely.
"""

from __future__ import annotations

import importlib
import re

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from gpu_worker.analyzer import Analyzer
from gpu_worker.devices import cuda_initialized

__all__ = ["BUILTINS", "DEFAULT_ANALYZERS", "AnalyzerConfigError", "check_loaded", "resolve_analyzers"]

BUILTINS = {
    "digits": "gpu_worker.analyzers.digits:DigitsAnalyzer",
    # Needs the optional extra (pip install "gpuq[embed]"), so it is served only when named.
    "embed": "gpu_worker.analyzers.embed:EmbedAnalyzer",
    "simulate": "gpu_worker.analyzers.simulate:SimulateAnalyzer",
    # Does nothing: measures what the service itself costs per job (bench/throughput.py).
    "noop": "gpu_worker.analyzers.noop:NoopAnalyzer",
}
DEFAULT_ANALYZERS = "digits,simulate"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class AnalyzerConfigError(RuntimeError):
    """Raised when an analyzer named in the configuration cannot be served."""


def resolve_analyzers(config: str) -> list[type[Analyzer]]:
    entries = [e.strip() for e in config.split(",") if e.strip()]
    if not entries:
        raise AnalyzerConfigError("GPUQ_ANALYZERS names no analyzer")
    classes = [_import(BUILTINS.get(entry, entry)) for entry in entries]
    names = [cls.name for cls in classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AnalyzerConfigError(f"two analyzers share the name(s) {duplicates}")
    return classes


def _import(path: str) -> type[Analyzer]:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise AnalyzerConfigError(
            f"{path!r} is neither a built-in ({', '.join(BUILTINS)}) nor an import path 'package.module:Class'")
    cuda_before = cuda_initialized()
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise AnalyzerConfigError(f"cannot import {module_name!r} for analyzer {path!r}: {error!r}") from error
    # Only blame the module if CUDA came up during its import (a test process may have initialised it before).
    if not cuda_before and cuda_initialized():
        raise AnalyzerConfigError(
            f"importing {module_name!r} for analyzer {path!r} initialised CUDA; the worker forks its model "
            "process after importing analyzers, and a forked child cannot use CUDA initialised before the fork: "
            "touch CUDA only in setup(device)")
    cls = getattr(module, attr, None)
    if cls is None:
        raise AnalyzerConfigError(f"module {module_name!r} has no attribute {attr!r}")
    _check(cls, path)
    return cls




def _check(cls: object, path: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Analyzer)):
        raise AnalyzerConfigError(f"{path!r} is not a subclass of gpu_worker.analyzer.Analyzer")
    if not _NAME.match(cls.name or ""):
        raise AnalyzerConfigError(f"{path!r} needs a name of lowercase letters, digits, '-' or '_'")
    if cls.predict is Analyzer.predict:
        raise AnalyzerConfigError(f"{path!r} does not implement predict(batch)")
    if not cls.media_types and cls.input_schema is None:
        raise AnalyzerConfigError(f"{path!r} accepts neither a file (media_types) nor a JSON input (input_schema)")
    if cls.max_batch_size < 1 or cls.max_wait_ms < 0 or cls.max_input_bytes < 1:
        raise AnalyzerConfigError(f"{path!r} has batching or size limits out of range")
    for label, schema in (("params_schema", cls.params_schema), ("input_schema", cls.input_schema)):
        if schema is None:
            continue
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            raise AnalyzerConfigError(
                f"{path!r} has an invalid {label} at {error.json_path}: {error.message}") from None


def check_loaded(analyzer: Analyzer) -> None:
    """After ``setup``: what the analyzer says about its weights must be usable as provenance."""
    digest = analyzer.weights_sha256
    if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
        raise AnalyzerConfigError(f"analyzer {analyzer.name!r} set weights_sha256 to {digest!r}; "
                                  "expected 64 lowercase hex digits (gpu_worker.weights.file_sha256) or None")
