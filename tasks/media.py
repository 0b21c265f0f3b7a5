"""Recognise an upload's type from its first bytes, never from its name.

Kept free of image libraries so the API stays light: a full decode happens on
the worker, which fails the job with ``invalid_input`` if the bytes are broken.
"""

from __future__ import annotations

__all__ = ["MEDIA_SIGNATURES", "sniff_media_type"]

#: media type -> leading bytes that identify it.
MEDIA_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "application/x-npy": (b"\x93NUMPY",),
    "application/x-hdf5": (b"\x89HDF\r\n\x1a\n",),
}


def sniff_media_type(data: bytes) -> str | None:
    """Return the media type whose signature ``data`` starts with, or ``None``."""
    for media_type, signatures in MEDIA_SIGNATURES.items():
        if any(data.startswith(sig) for sig in signatures):
            return media_type
    return None
