"""Inputs that could exhaust or hijack a worker are refused before they are read in full.

Decompression bombs (images, compressed HDF5), headers that lie about their
size, pickled arrays, external HDF5 data: each is an ``InvalidInput`` that
fails one job, never an allocation the size an attacker chose.
"""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from gpu_worker.analyzer import InvalidInput  # noqa: E402
from gpu_worker.decoding import MAX_DECODED_BYTES, MAX_ELEMENTS, decode_frames  # noqa: E402

NPY, H5 = "application/x-npy", "application/x-hdf5"


def _h5(build) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        build(f)
    return buffer.getvalue()


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_compressed_hdf5_dataset_that_would_fill_memory_is_refused_unread():
    # 36 M float64 elements (under the element limit) = 288 MiB, in a file of a few KiB.
    data = _h5(lambda f: f.create_dataset("frames", shape=(1, 6000, 6000), dtype="f8", chunks=(1, 500, 500),
                                          compression="gzip"))
    assert len(data) < 64 * 1024 and 6000 * 6000 < MAX_ELEMENTS and 6000 * 6000 * 8 > MAX_DECODED_BYTES
    before = _max_rss_mb()
    with pytest.raises(InvalidInput, match="bytes once read"):
        decode_frames(data, H5)
    assert _max_rss_mb() - before < 100  # nothing near 288 MiB was allocated


def test_hdf5_over_the_element_or_frame_limit_is_refused():
    data = _h5(lambda f: f.create_dataset("frames", shape=(200_000, 8, 8), dtype="u1", compression="gzip"))
    with pytest.raises(InvalidInput, match="frames"):
        decode_frames(data, H5)


def test_hdf5_external_storage_and_links_are_refused(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\x01" * 64)
    data = _h5(lambda f: f.create_dataset("frames", shape=(8, 8), dtype="u1", external=[(str(outside), 0, 64)]))
    with pytest.raises(InvalidInput, match="outside the file"):
        decode_frames(data, H5)

    def linked(f):
        f["frames"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/data")
    with pytest.raises(InvalidInput):
        decode_frames(_h5(linked), H5, {"dataset": "frames"})


def _npy_header(shape, descr="<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("shape, match", [
    ((100_000, 100_000), "elements"),        # a header claiming 80 GB
    ((3000, 3000), "truncated"),             # a header claiming more data than was sent
    ((2, 2, 2, 2), "shape"),
    ((0, 8), "empty"),
])
def test_npy_headers_are_checked_before_any_allocation(shape, match):
    with pytest.raises(InvalidInput, match=match):
        decode_frames(_npy_header(shape) + b"\x00" * 64, NPY)


def test_pickled_npy_is_never_unpickled():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="dtype"):
        decode_frames(buffer.getvalue(), NPY)


@pytest.mark.parametrize("descr", ["|S8", "<U4", "<c16", "|V8"])
def test_npy_of_a_non_numeric_dtype_is_refused(descr):
    with pytest.raises(InvalidInput, match="dtype"):
        decode_frames(_npy_header((8, 8), descr) + b"\x00" * 2048, NPY)
