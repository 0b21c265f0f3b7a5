"""Decoding holds little more than what its checks admitted, and tiling it changes no result.

An attacker's 8192x8192 uint8 frame, gzip compressed to a few hundred KiB,
passes the 256 MiB check at 64 MiB; decoding it must then stay near that,
not make several float64 copies of it (1.5 GiB).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from bench.decode_memory import H5, attack_h5, h5_bytes, ink_frame, peak_growth  # noqa: E402
from gpu_worker import decoding  # noqa: E402
from gpu_worker.analyzer import InvalidInput  # noqa: E402

DECODER = Path(decoding.__file__)


def test_the_attackers_frame_peaks_within_three_times_its_decoded_size():
    admitted = 8192 * 8192  # uint8
    growth = peak_growth(DECODER, H5, attack_h5(), h5_bytes(ink_frame(64, 64)[None]))["growth_bytes"]
    print(f"\npeak growth decoding one 8192x8192 uint8 frame: {growth / 2**20:.0f} MiB = {growth / admitted:.2f}x")
    assert growth <= 3 * admitted


@pytest.mark.parametrize("shape", [(700, 900), (3, 5000), (5000, 2), (333, 1)])
def test_a_frame_decoded_a_tile_at_a_time_gives_the_same_frame_to_the_bit(shape, monkeypatch):
    rng = np.random.default_rng(sum(shape))
    frames = [
        rng.random(shape),
        np.where(rng.random(shape) > 0.97, 10, 200).astype(np.uint8),  # dark specks on a light page
        np.pad(np.ones((shape[0] // 2 or 1, shape[1] // 3 or 1)), 1).astype(">f4")[: shape[0], : shape[1]],
    ]
    monkeypatch.setattr(decoding, "_TILE_VALUES", 10**9)
    whole = [decoding.to_digit_frame(frame, blank_ok=True) for frame in frames]
    monkeypatch.setattr(decoding, "_TILE_VALUES", 1031)  # rows of several tiles, and tiles of several rows
    tiled = [decoding.to_digit_frame(frame, blank_ok=True) for frame in frames]
    assert any(w.any() for w in whole)
    for w, t in zip(whole, tiled, strict=True):
        np.testing.assert_array_equal(w, t)


def test_a_tiny_dataset_in_a_huge_chunk_is_refused_unread():
    # 64 values, in one chunk of 256 MiB (a resizable dataset's chunk may outgrow
    # it): HDF5 decompresses the whole chunk to read any of it.
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset(
            "frames",
            shape=(1, 8, 8),
            maxshape=(None, None, None),
            chunks=(1, 16384, 16384),
            dtype="u1",
            compression="gzip",
        )
    with pytest.raises(InvalidInput, match="bytes once read"):
        decoding.decode_frames(buffer.getvalue(), H5)


def test_an_array_that_fits_but_whose_decoding_does_not_is_refused():
    # 256 MiB of float32 exactly: the old limit, with nothing left to decode it in.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (8192, 8192)})
    with pytest.raises(InvalidInput, match="bytes once read"):
        decoding.decode_frames(header.getvalue(), "application/x-npy")
