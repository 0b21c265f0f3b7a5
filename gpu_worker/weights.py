"""Fingerprints of model weights, for the provenance every result carries.

A result is only as trustworthy as knowing which weights made it: two workers
with the same analyzer version but different weight files must be told apart.
An analyzer sets ``weights_sha256`` in ``setup`` with one of these helpers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "state_dict_sha256"]

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file, as ``sha256sum`` prints it (so operators can check it by hand)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(module: Any) -> str:
    """SHA-256 of a torch module's parameters and buffers: names, dtypes, shapes and bytes.

    For weights that are built in code rather than read from one file. The
    tensors are hashed in name order, so the same weights give the same hash
    on any device.
    """
    import torch  # only the worker side hashes tensors; keep this module light to import

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        # A byte view works for every dtype, bfloat16 included (numpy has none).
        digest.update(flat.view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()

