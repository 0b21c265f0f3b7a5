"""On a GPU machine: embed through the whole stack on the GPU, matching sentence-transformers on the CPU.

Deselected by default (no GPU on CI); run with ``pytest -m gpu -s`` where CUDA exists
(``-s`` shows the sentences/s line). ``bench/throughput.py --analyzer embed --device cuda`` measures more carefully.
"""

from __future__ import annotations

import time

import pytest
import requests
import torch

from bench.workloads import make_texts
from gpu_worker.analyzers.embed_model import model_dir
from gpu_worker.devices import discover_gpus
from gpuq.redis_server import RedisServer
from tests.stack import base_env, start_api, start_workers, wait_for_status, wait_for_workers

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_embed_stack(tmp_path):
    gpus = discover_gpus({})
    assert gpus, "pytest -m gpu needs nvidia-smi to list at least one GPU"
    server = RedisServer(tmp_path / "redis").start()
    env = base_env(server.url, GPUQ_ANALYZERS="embed", GPUQ_GPUS=gpus[0])
    workers = start_workers(env, tmp_path)
    api_process, api = start_api(env, tmp_path, workers=1)
    try:
        [live] = wait_for_workers(server.url, {"embed"}, workers, timeout=300)
        yield api, live
    finally:
        api_process.stop()
        workers.stop(timeout=60)
        server.stop()


def test_embed_runs_on_the_gpu_and_matches_sentence_transformers(gpu_embed_stack):
    from sentence_transformers import SentenceTransformer

    api, live = gpu_embed_stack
    assert live["device"].startswith("cuda:")
    texts = make_texts(256)
    warm = requests.post(f"{api}/v1/jobs", json={"analyzer": "embed", "input": texts[:8]}, timeout=10).json()
    assert wait_for_status(api, warm["id"], {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"

    began = time.perf_counter()
    job = requests.post(f"{api}/v1/jobs", json={"analyzer": "embed", "input": texts}, timeout=10).json()
    done = wait_for_status(api, job["id"], {"succeeded", "failed"}, timeout=120)
    elapsed = time.perf_counter() - began
    assert done["status"] == "succeeded", done
    assert done["device"].startswith("cuda:") and done["result"]["count"] == len(texts)
    print(f"\nembed on {done['device']}: {len(texts)} sentences in one job, {len(texts) / elapsed:,.0f} sentences/s "
          f"through the stack (run {done['timings']['run_ms']:.0f} ms)")

    reference = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True).float()
    cosines = (torch.tensor(done["result"]["embeddings"]) * expected).sum(dim=1)
    assert cosines.min().item() >= 0.999, cosines.min().item()
