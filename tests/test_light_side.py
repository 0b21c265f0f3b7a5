"""The light side (api/, tasks/) never imports torch, and the running API has not loaded it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.stack import ROOT


def test_importing_api_and_tasks_loads_no_torch(stack_env):
    code = ("import sys, api, tasks.app, tasks.jobs, tasks.submission, tasks.catalog, celeryconfig\n"
            "app = api.create_app()\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'PIL', 'h5py'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], env=stack_env, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_running_api_processes_have_not_loaded_torch(api_server, api):
    import requests

    requests.get(f"{api}/v1/analyzers", timeout=5)  # make sure workers have served a request
    process, _ = api_server
    pids = [process.pid, *_children(process.pid)]
    assert len(pids) >= 2  # the gunicorn master and its workers
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "torch/_C" not in maps, f"pid {pid} has torch mapped"


def test_api_and_tasks_sources_never_import_torch():
    for package in ("api", "tasks"):
        for source in (ROOT / package).rglob("*.py"):
            for line in source.read_text().splitlines():
                stripped = line.strip()
                assert not (stripped.startswith(("import torch", "from torch"))), f"{source}: {line}"
    assert os.path.exists(ROOT / "celeryconfig.py")
