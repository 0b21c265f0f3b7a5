"""Peak memory of decoding one upload, as a multiple of the decoded size its checks admitted.

Each case (a one-frame 8192x8192 uint8 HDF5 file of about 140 KiB, gzip
compressed; a 64-frame 1024x1024 uint8 HDF5 stack; the 8192x8192 frame as
.npy; a 40-megapixel RGBA PNG) is decoded by ``decode_frames`` in a fresh
interpreter, once with the decoder of ``--before`` (a git revision) and once
with this tree's: peak RSS growth over a baseline taken after imports and a
warm-up decode (VmHWM, the peak RSS), divided by the admitted decoded size (the array in its own
dtype; for an image, its pixels as Pillow holds them). The digest column says
whether both decoders gave the same frames, to the bit.

    PYTHONPATH=. .venv/bin/python bench/decode_memory.py [--before 95b5b70] [--cases h5-frame,npy-frame]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: The last revision that decoded a whole frame in float64 at once.
DEFAULT_BEFORE = "95b5b70"
H5, NPY, PNG = "application/x-hdf5", "application/x-npy", "image/png"

_MEASURE = """
import hashlib, importlib.util, json, sys
module_path, media_type, warmup_path, data_path = sys.argv[1:5]

def peak_rss_bytes():
    # VmHWM, not getrusage's ru_maxrss: that one keeps the parent's RSS at
    # fork across exec, so a big parent (pytest) would hide the child's peak.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

spec = importlib.util.spec_from_file_location("decoding_under_test", module_path)
decoding = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decoding)
import h5py, PIL.Image, PIL.PngImagePlugin  # imported lazily by decoding: part of the baseline
decoding.decode_frames(open(warmup_path, "rb").read(), media_type)
data = open(data_path, "rb").read()
baseline = peak_rss_bytes()
frames, _ = decoding.decode_frames(data, media_type)
growth = peak_rss_bytes() - baseline
print(json.dumps({"growth_bytes": growth, "digest": hashlib.sha256(frames.tobytes()).hexdigest()[:12]}))
"""


def ink_frame(height: int, width: int, at: float = 0.5) -> np.ndarray:
    """A uint8 frame with one bright bar on a dark page: a digit "1" as far as decoding goes."""
    frame = np.zeros((height, width), np.uint8)
    left = int(width * at * 0.8)
    frame[height // 8 : height * 7 // 8, left : left + max(1, width // 12)] = 255
    return frame


def h5_bytes(frames: np.ndarray) -> bytes:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("frames", data=frames, compression="gzip")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def png_bytes(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def attack_h5() -> bytes:
    """The attacker's file: one 8192x8192 uint8 frame, gzip compressed to about 140 KiB."""
    return h5_bytes(ink_frame(8192, 8192)[None])


def _rgba(height: int, width: int) -> np.ndarray:
    gray = 255 - ink_frame(height, width)
    return np.dstack([gray, gray, gray, np.full_like(gray, 255)])


#: name -> (media type, the upload, a small upload of the same kind to warm up on, admitted decoded bytes)
CASES: dict[str, Callable[[], tuple[str, bytes, bytes, int]]] = {
    "h5-frame": lambda: (H5, attack_h5(), h5_bytes(ink_frame(64, 64)[None]), 8192 * 8192),
    "h5-stack": lambda: (
        H5,
        h5_bytes(np.stack([ink_frame(1024, 1024, at=i / 64) for i in range(64)])),
        h5_bytes(ink_frame(64, 64)[None]),
        64 * 1024 * 1024,
    ),
    "npy-frame": lambda: (NPY, npy_bytes(ink_frame(8192, 8192)), npy_bytes(ink_frame(64, 64)), 8192 * 8192),
    "png-rgba": lambda: (PNG, png_bytes(_rgba(5700, 7000)), png_bytes(_rgba(64, 64)), 5700 * 7000 * 4),
}


def peak_growth(module_path: Path, media_type: str, data: bytes, warmup: bytes) -> dict:
    """Decode ``data`` with the decoding module at ``module_path`` in a fresh interpreter.

    Returns ``growth_bytes`` (peak RSS over the baseline) and ``digest`` (of the frames).
    """
    with tempfile.TemporaryDirectory() as tmp:
        data_path, warmup_path = Path(tmp, "upload"), Path(tmp, "warmup")
        data_path.write_bytes(data)
        warmup_path.write_bytes(warmup)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-c", _MEASURE, str(module_path), media_type, str(warmup_path), str(data_path)]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"decoding with {module_path} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def decoder_at(revision: str, into: Path) -> Path:
    """``gpu_worker/decoding.py`` as it was at ``revision``, written under ``into``."""
    source = subprocess.run(
        ["git", "show", f"{revision}:gpu_worker/decoding.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = into / "decoding_before.py"
    path.write_text(source)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision of the decoder to compare with")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    args = parser.parse_args()
    print(f"{'case':<10} {'upload':>10} {'admitted':>10} {'before':>18} {'after':>18}  same frames")
    with tempfile.TemporaryDirectory() as tmp:
        decoders = {"before": decoder_at(args.before, Path(tmp)), "after": ROOT / "gpu_worker" / "decoding.py"}
        for name in args.cases.split(","):
            media_type, data, warmup, admitted = CASES[name]()
            runs = {label: peak_growth(path, media_type, data, warmup) for label, path in decoders.items()}
            cells = [
                f"{r['growth_bytes'] / 2**20:7.0f} MiB {r['growth_bytes'] / admitted:5.2f}x" for r in runs.values()
            ]
            same = runs["before"]["digest"] == runs["after"]["digest"]
            print(
                f"{name:<10} {len(data) / 2**10:6.0f} KiB {admitted / 2**20:6.0f} MiB {cells[0]:>18} {cells[1]:>18}"
                f"  {'yes' if same else 'NO'}"
            )


if __name__ == "__main__":
    main()
