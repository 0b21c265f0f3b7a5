"""Provenance: every result names the analyzer, its version and a hash of the weights that made it."""

from __future__ import annotations

import copy
import hashlib
import os

import pytest
import requests
import torch

from gpu_worker.analyzers.digits_model import WEIGHTS_PATH
from gpu_worker.registry import AnalyzerConfigError, check_loaded
from gpu_worker.weights import file_sha256, state_dict_sha256
from tests.fixtures.analyzers import BadWeightsHash, Echo
from tests.stack import ROOT

DIGITS_SHA256 = hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()


def test_file_hash_is_what_sha256sum_prints(tmp_path):
    path = tmp_path / "weights.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_state_dict_hash_follows_the_weights_not_the_object():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    twin.load_state_dict(net.state_dict())
    assert state_dict_sha256(net) == state_dict_sha256(twin)
    with torch.no_grad():
        twin[0].weight[1, 2] += 1e-6
    assert state_dict_sha256(net) != state_dict_sha256(twin)
    assert state_dict_sha256(net) != state_dict_sha256(copy.deepcopy(net).to(torch.bfloat16))  # other bytes


def test_a_malformed_weights_hash_is_refused_after_setup():
    broken = BadWeightsHash()
    broken.setup("cpu")
    with pytest.raises(AnalyzerConfigError, match="weights_sha256 to 'md5:1234'"):
        check_loaded(broken)
    check_loaded(Echo())  # None: an analyzer without weights


def test_succeeded_jobs_carry_provenance(api):
    with open(ROOT / "examples" / "seven.png", "rb") as image:
        job = requests.post(f"{api}/v1/jobs", data={"analyzer": "digits"}, files={"file": image}, timeout=10).json()
    assert job["provenance"] is None  # nothing has run yet
    done = requests.get(f"{api}/v1/jobs/{job['id']}?wait=20", timeout=30).json()
    assert done["status"] == "succeeded"
    assert done["provenance"] == {"analyzer": "digits", "version": "1", "weights_sha256": DIGITS_SHA256}

    job = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 0}}, timeout=10).json()
    done = requests.get(f"{api}/v1/jobs/{job['id']}?wait=20", timeout=30).json()
    assert done["provenance"] == {"analyzer": "simulate", "version": "1", "weights_sha256": None}


def test_a_failed_job_has_no_result_and_no_provenance(api):
    job = requests.post(f"{api}/v1/jobs", json={"analyzer": "simulate", "params": {"seconds": 0, "fail": "no"}},
                        timeout=10).json()
    done = requests.get(f"{api}/v1/jobs/{job['id']}?wait=20", timeout=30).json()
    assert done["status"] == "failed" and done["result"] is None and done["provenance"] is None


def test_analyzers_listing_shows_each_workers_weights(api):
    listing = {a["name"]: a for a in requests.get(f"{api}/v1/analyzers", timeout=5).json()["analyzers"]}
    assert [w["weights_sha256"] for w in listing["digits"]["workers"]] == [DIGITS_SHA256]
    assert [w["weights_sha256"] for w in listing["echo"]["workers"]] == [None]
