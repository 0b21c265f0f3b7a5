"""``python -m api.keygen``: a real argument parser, run as the README runs it (a process, from a fresh shell's
point of view: the virtualenv's python, any working directory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from api.auth import ApiKeys


def keygen(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "api.keygen", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage_and_makes_no_key(tmp_path, flag):
    done = keygen(flag, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m api.keygen")
    assert "TENANT" in done.stdout and "GPUQ_API_KEYS" in done.stdout
    assert "gpuq_" not in done.stdout and "entry:" not in done.stdout


@pytest.mark.parametrize("tenant", ["bad name", "team:a", "x" * 65, "", "café"])
def test_a_name_the_api_would_refuse_is_refused_with_the_rule(tmp_path, tenant):
    done = keygen(tenant, cwd=tmp_path)
    assert done.returncode == 2
    assert "1 to 64 letters, digits" in done.stderr and "usage:" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("args", [[], ["team-a", "team-b"], ["--tenant=team-a"]])
def test_anything_but_one_tenant_is_a_usage_error(tmp_path, args):
    done = keygen(*args, cwd=tmp_path)
    assert done.returncode == 2 and "usage:" in done.stderr and done.stdout == ""


def test_a_valid_name_gets_a_key_the_api_accepts(tmp_path):
    done = keygen("team.a_1-x", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    key = done.stdout.split("): ", 1)[1].splitlines()[0].strip()
    entry = done.stdout.rsplit("entry: ", 1)[1].strip()
    assert ApiKeys.parse(entry).tenant_for(key) == "team.a_1-x"
