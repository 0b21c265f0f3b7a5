"""The set-up that `make up` and `make test` run: the CPU build of torch where there is no GPU, the CUDA build
where there is one, and a virtualenv without CUDA libraries on a machine without a GPU.

`make -n` prints the install commands without running them; a stand-in nvidia-smi first on PATH plays the
machine with or without a GPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# nvidia-smi prints its failures on stdout, not stderr: output alone does not mean a GPU.
NO_GPU = ('#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\n'
          'exit 9\n')
NO_DEVICE = '#!/bin/sh\necho "No devices were found"\nexit 6\n'
ONE_GPU = '#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"\n'


def _make_n(tmp_path: Path, nvidia_smi: str, *make_args: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    fake.write_text(nvidia_smi)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH", "TORCH_SPEC", "TORCH_VERSION", "MAKEFLAGS")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    # A virtualenv that does not exist yet: make has the whole install to print.
    return subprocess.run(["make", "-n", f"VENV={tmp_path / 'venv'}", *make_args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _torch_install_lines(tmp_path: Path, nvidia_smi: str, *make_args: str) -> list[str]:
    done = _make_n(tmp_path, nvidia_smi, "install", *make_args)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if "pip install" in line and "torch" in line]


def _makefile_torch_version() -> str:
    return re.search(r"(?m)^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text()).group(1)


def test_without_a_gpu_the_install_takes_only_a_cpu_build(tmp_path):
    version = _makefile_torch_version()
    [line] = _torch_install_lines(tmp_path, NO_GPU)
    attempts = line.split("||")
    assert len(attempts) == 2
    # First what pip's own configuration reaches (a wheelhouse, a mirror), asked for the +cpu build exactly.
    assert f'"torch=={version}+cpu"' in attempts[0] and "index-url" not in attempts[0]
    # Then PyTorch's CPU index in place of PyPI, whose Linux wheel is the CUDA build.
    assert f'"torch=={version}"' in attempts[1] and f"--index-url {CPU_INDEX}" in attempts[1]
    assert "--extra-index-url" not in line


def test_no_device_found_is_no_gpu(tmp_path):
    [line] = _torch_install_lines(tmp_path, NO_DEVICE)
    assert f"--index-url {CPU_INDEX}" in line


def test_only_the_install_asks_nvidia_smi(tmp_path):
    asked = tmp_path / "asked"
    counting = f'#!/bin/sh\necho x >> {asked}\necho "GPU 0: NVIDIA H200"\n'
    assert _make_n(tmp_path, counting, "clean").returncode == 0
    assert not asked.exists()
    _torch_install_lines(tmp_path, counting)
    assert asked.read_text() == "x\n"  # once, however often the recipe names the build


def test_an_unknown_build_is_refused_clearly(tmp_path):
    done = _make_n(tmp_path, ONE_GPU, "install", "TORCH=rocm")
    assert done.returncode != 0
    assert 'TORCH is "rocm": give TORCH=cpu or TORCH=cuda' in done.stderr, done.stderr


def test_with_a_gpu_the_install_takes_pypis_cuda_build(tmp_path):
    [line] = _torch_install_lines(tmp_path, ONE_GPU)
    assert line.endswith(f'pip install -q "torch=={_makefile_torch_version()}"')


def test_the_guess_can_be_overridden(tmp_path):
    [cpu_line] = _torch_install_lines(tmp_path, ONE_GPU, "TORCH=cpu")
    assert f"--index-url {CPU_INDEX}" in cpu_line
    [cuda_line] = _torch_install_lines(tmp_path, NO_GPU, "TORCH=cuda")
    assert "index-url" not in cuda_line and "+cpu" not in cuda_line
    spec = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
    [spec_line] = _torch_install_lines(tmp_path, NO_GPU, f"TORCH_SPEC={spec}")
    assert spec_line.endswith(f"pip install -q {spec}")


def test_the_makefile_and_the_images_install_the_same_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"(?m)^ARG TORCH_VERSION=(\S+)$", dockerfile).group(1) == _makefile_torch_version()


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    return listed.returncode == 0 and "GPU" in listed.stdout


# nvidia-ml-py is NVML's Python binding (the gpu extra's telemetry): a few hundred kB, no CUDA library.
_NOT_CUDA = {"nvidia-ml-py"}


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU: the CUDA build is the right one here")
def test_without_a_gpu_the_virtualenv_holds_no_cuda_package():
    """The virtualenv this suite runs in, as `make test` built it (in CI: from a fresh clone)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=120, check=True)
    names = {package["name"].lower().replace("_", "-") for package in json.loads(listed.stdout)}
    cuda = sorted(n for n in names if (n.startswith(("nvidia-", "cuda-")) or n == "triton") and n not in _NOT_CUDA)
    assert cuda == [], f"CUDA packages in a virtualenv on a machine without a GPU: {cuda}"
    built_for = subprocess.run([sys.executable, "-c", "import torch; print(torch.version.cuda, torch.__version__)"],
                               capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert built_for[0] == "None", f"torch {built_for[1]} is built for CUDA {built_for[0]}"
