"""The built-in ``digits`` analyzer: shipped weights, decoding of every media type, errors.

CPU only, no Redis. Inputs are made here from held-out digits (the test side
of the training script's split), so the accuracy checked is on unseen data.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_digits import heldout_split  # noqa: E402

from gpu_worker.analyzer import AnalyzerError, InvalidInput, Item, OutOfMemory  # noqa: E402
from gpu_worker.analyzers import digits as digits_module  # noqa: E402
from gpu_worker.analyzers.digits import DigitsAnalyzer  # noqa: E402
from gpu_worker.analyzers.digits_model import WEIGHTS_PATH, WeightsError, load_model  # noqa: E402
from gpu_worker.decoding import MAX_PIXELS, decode_frames  # noqa: E402

PNG, JPEG, NPY, H5 = "image/png", "image/jpeg", "application/x-npy", "application/x-hdf5"


# -- fixtures and input builders --------------------------------------------------


@pytest.fixture(scope="module")
def analyzer() -> DigitsAnalyzer:
    a = DigitsAnalyzer()
    a.setup("cpu")
    return a


@pytest.fixture(scope="module")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    _, x_test, _, y_test = heldout_split()
    return x_test, y_test


@pytest.fixture(scope="module")
def sample(analyzer: DigitsAnalyzer, heldout: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, int]]:
    """Two held-out digits of each class that the model gets right with confidence
    on their 8x8 originals: what every encoding of them must then preserve."""
    x, y = heldout
    with torch.inference_mode():
        p = torch.softmax(analyzer.model(torch.from_numpy(x)), 1).numpy()  # type: ignore[misc]
    picked: list[tuple[np.ndarray, int]] = []
    for digit in range(10):
        ok = [i for i in np.flatnonzero(y == digit) if p[i].argmax() == digit and p[i].max() > 0.9]
        picked += [(x[i], digit) for i in ok[:2]]
    assert len(picked) == 20
    return picked


def ink(digit: np.ndarray, size: int = 96, resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    """An 8x8 digit (0..16) as a size x size float image in 0..1, ink high."""
    img = Image.fromarray((digit / 16).astype(np.float32), mode="F").resize((size, size), resample)
    return np.clip(np.asarray(img), 0.0, 1.0)


def on_page(a: np.ndarray, height: int = 140, width: int = 110, top: int = 20, left: int = 7) -> np.ndarray:
    """Place an ink image on a bigger, non-square page (0 = no ink)."""
    page = np.zeros((height, width), np.float32)
    page[top : top + a.shape[0], left : left + a.shape[1]] = a
    return page


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gray_u8(a: np.ndarray, dark_ink: bool = True) -> Image.Image:
    """0..1 ink -> 8-bit grayscale image, black on white unless ``dark_ink`` is False."""
    v = (1 - a) if dark_ink else a
    return Image.fromarray(np.round(v * 255).astype(np.uint8), mode="L")


def npy(a: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, **kw)
    return buf.getvalue()


def h5(datasets: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)
    return buf.getvalue()


def run_one(analyzer: DigitsAnalyzer, data: bytes, media_type: str, params: dict | None = None) -> object:
    return analyzer.predict([Item("job", data, media_type, params or {})])[0]


def assert_invalid(result: object, fragment: str = "") -> None:
    assert isinstance(result, InvalidInput), result
    assert result.code == "invalid_input"
    assert fragment.lower() in str(result).lower(), str(result)


# -- the model -------------------------------------------------------------------


def test_heldout_accuracy_through_predict(analyzer: DigitsAnalyzer, heldout: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = heldout
    result = run_one(analyzer, npy(x), NPY)
    assert result["count"] == len(y)
    acc = float(np.mean([f["digit"] == t for f, t in zip(result["frames"], y, strict=True)]))
    print(f"\nheld-out accuracy of the shipped weights (8x8 .npy stack): {acc:.4f} on {len(y)} digits")
    assert acc >= 0.97


def test_heldout_accuracy_through_png(analyzer: DigitsAnalyzer, heldout: tuple[np.ndarray, np.ndarray]) -> None:
    """Every held-out digit as its own 96x96 PNG job, in batches of 64 like the worker's."""
    x, y = heldout
    items = [Item(str(i), encode(gray_u8(ink(d)), "PNG"), PNG) for i, d in enumerate(x)]
    results = [r for lo in range(0, len(items), 64) for r in analyzer.predict(items[lo : lo + 64])]
    acc = float(np.mean([r["digit"] == t for r, t in zip(results, y, strict=True)]))
    print(f"\nheld-out accuracy through 96x96 PNGs: {acc:.4f}")
    assert acc >= 0.95


def test_single_image_result_shape(analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]]) -> None:
    digit, label = sample[0]
    result = run_one(analyzer, encode(gray_u8(ink(digit)), "PNG"), PNG)
    assert set(result) == {"digit", "confidence", "probabilities"}
    assert result["digit"] == label and isinstance(result["digit"], int)
    assert len(result["probabilities"]) == 10
    assert abs(sum(result["probabilities"]) - 1) < 1e-4
    assert result["confidence"] == max(result["probabilities"])
    json.dumps(result)


def test_example_seven(analyzer: DigitsAnalyzer) -> None:
    data = (ROOT / "examples" / "seven.png").read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        assert 96 <= img.width <= 160 and 96 <= img.height <= 160
    assert run_one(analyzer, data, PNG)["digit"] == 7


# -- every encoding of the same digits --------------------------------------------


def _png_l(a: np.ndarray) -> bytes:
    return encode(gray_u8(on_page(a)), "PNG")


def _png_inverted(a: np.ndarray) -> bytes:
    return encode(gray_u8(on_page(a), dark_ink=False), "PNG")


def _png_palette(a: np.ndarray) -> bytes:
    return encode(gray_u8(on_page(a)).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def _png_rgba(a: np.ndarray) -> bytes:
    # Blue ink on transparent "paper": the ink lives in the alpha channel.
    page = on_page(a)
    rgba = np.zeros(page.shape + (4,), np.uint8)
    rgba[..., 2] = 160
    rgba[..., 3] = np.round(page * 255)
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def _png_rgba_opaque(a: np.ndarray) -> bytes:
    return encode(gray_u8(on_page(a)).convert("RGBA"), "PNG")


def _png_16bit(a: np.ndarray) -> bytes:
    # A faint 16-bit scan: ink spans only a slice of the range, on a light background.
    v = np.round(40_000 + (1 - on_page(a)) * 12_000).astype(np.uint16)
    data = encode(Image.fromarray(v), "PNG")
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode.startswith("I"), img.mode  # stays 16-bit
    return data


def _jpeg(a: np.ndarray) -> bytes:
    return encode(gray_u8(on_page(a)).convert("RGB"), "JPEG", quality=80)


def _jpeg_large_gray(a: np.ndarray) -> bytes:
    # Big enough for the JPEG draft (downscaled) decode to kick in.
    return encode(gray_u8(on_page(ink_big(a), 1400, 1100, 200, 150)), "JPEG", quality=90)


def ink_big(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a, mode="F").resize((900, 900), Image.Resampling.BILINEAR))


ENCODINGS = {
    "png-gray": (_png_l, PNG),
    "png-white-on-black": (_png_inverted, PNG),
    "png-palette": (_png_palette, PNG),
    "png-rgba-transparent": (_png_rgba, PNG),
    "png-rgba-opaque": (_png_rgba_opaque, PNG),
    "png-16bit": (_png_16bit, PNG),
    "jpeg-rgb": (_jpeg, JPEG),
    "jpeg-large": (_jpeg_large_gray, JPEG),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_image_encodings(analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]], encoding: str) -> None:
    make, media_type = ENCODINGS[encoding]
    items = [Item(str(i), make(ink(d)), media_type) for i, (d, _) in enumerate(sample)]
    results = analyzer.predict(items)
    got = [r["digit"] for r in results]
    assert got == [label for _, label in sample]


def test_npy_2d_digit_scale_is_used_as_is(analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]]) -> None:
    for digit, label in sample:
        frames, is_stack = decode_frames(npy(digit), NPY, {})
        assert not is_stack and frames.shape == (1, 8, 8)
        np.testing.assert_array_equal(frames[0], digit)
        result = run_one(analyzer, npy(digit.astype(np.int64)), NPY)
        assert result["digit"] == label and len(result["probabilities"]) == 10


def test_npy_2d_any_size(analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]]) -> None:
    # 64x48 float64 frames in an arbitrary range, and uint8 0..255 8x8 frames.
    for digit, label in sample:
        a = on_page(ink(digit, 40), 64, 48, 12, 4).astype(np.float64) * 3.5 - 1.0
        assert run_one(analyzer, npy(a), NPY)["digit"] == label
        assert run_one(analyzer, npy(np.round(digit * 255 / 16).astype(np.uint8)), NPY)["digit"] == label


def test_npy_3d_stack(analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]]) -> None:
    labels = [label for _, label in sample]
    frames = np.stack([np.round(ink(d, 32) * 255).astype(np.uint8) for d, _ in sample])
    result = run_one(analyzer, npy(frames), NPY)
    assert result["count"] == len(sample)
    assert [f["digit"] for f in result["frames"]] == labels
    assert all(set(f) == {"digit", "confidence"} for f in result["frames"])
    # Fortran order and big-endian floats decode the same.
    digits = np.stack([d for d, _ in sample]).astype(">f4")
    result = run_one(analyzer, npy(np.asfortranarray(digits)), NPY)
    assert [f["digit"] for f in result["frames"]] == labels


def test_h5_default_named_and_first_dataset(analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]]) -> None:
    labels = [label for _, label in sample]
    digits = np.stack([d for d, _ in sample])
    junk = np.full((3, 8, 8), 16.0)
    # "frames" wins over other datasets.
    r = run_one(analyzer, h5({"aaa": junk, "frames": digits}), H5)
    assert [f["digit"] for f in r["frames"]] == labels
    # A named dataset in a group, read as 64x64 uint16 frames.
    big = np.stack([np.round(ink(d, 64) * 4000).astype(np.uint16) for d, _ in sample])
    r = run_one(analyzer, h5({"aaa": junk, "scan/digits": big}), H5, {"dataset": "/scan/digits"})
    assert [f["digit"] for f in r["frames"]] == labels
    # Otherwise the first dataset (in name order); a 2-D dataset is a stack of one.
    r = run_one(analyzer, h5({"b": digits, "a/x": digits[0]}), H5)
    assert r["count"] == 1 and r["frames"][0]["digit"] == labels[0]


def test_h5_progress(analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]]) -> None:
    digits = np.stack([d for d, _ in sample] * 30)  # 600 frames -> 3 chunks of <= 256
    reports: list[tuple[int, int, str]] = []
    item = Item("job", h5({"frames": digits}), H5, {}, lambda done, total, stage: reports.append((done, total, stage)))
    other: list[tuple[int, int, str]] = []
    single = Item("one", npy(sample[0][0]), NPY, {}, lambda d, t, s: other.append((d, t, s)))
    results = analyzer.predict([single, item])
    assert results[1]["count"] == 600
    # The single image's frame comes first in the shared forward pass, hence 255.
    assert reports == [(255, 600, "frames"), (511, 600, "frames"), (600, 600, "frames")]
    assert other == []  # single images report no progress


def test_passes_of_any_size_give_the_same_results_and_progress_in_order(
    analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of single images, stacks and a bad input: 7 frames a pass answers as 256 a pass does."""
    digits = np.stack([d for d, _ in sample])
    reports: dict[str, list[tuple[int, int, str]]] = {}

    def batch() -> list[Item]:
        def item(job: str, data: bytes, media_type: str) -> Item:
            return Item(job, data, media_type, {}, lambda d, t, s: reports.setdefault(job, []).append((d, t, s)))

        return [item("png", encode(gray_u8(ink(digits[3])), "PNG"), PNG),
                item("big", npy(np.tile(digits, (30, 1, 1))), NPY),
                item("bad", b"\x89PNG\r\n\x1a\nbroken", PNG),
                item("h5", h5({"frames": digits[:5]}), H5),
                item("one", npy(digits[8]), NPY)]

    whole = analyzer.predict(batch())
    whole_reports, reports = reports, {}
    monkeypatch.setattr(analyzer, "items_per_pass", 7)
    sevens = analyzer.predict(batch())
    assert_invalid(sevens[2])
    for a, b in ((whole[0], sevens[0]), (whole[4], sevens[4])):
        assert a["digit"] == b["digit"] and np.allclose(a["probabilities"], b["probabilities"], atol=1e-5)
    for a, b in ((whole[1], sevens[1]), (whole[3], sevens[3])):
        assert [f["digit"] for f in a["frames"]] == [f["digit"] for f in b["frames"]]
        assert np.allclose([f["confidence"] for f in a["frames"]], [f["confidence"] for f in b["frames"]], atol=1e-5)
    assert set(reports) == set(whole_reports) == {"big", "h5"}  # stacks only
    big = reports["big"]
    assert [done for done, _, _ in big] == sorted({done for done, _, _ in big})  # strictly rising
    assert big[-1] == (600, 600, "frames") and len(big) == 86  # the PNG's frame, then these 600: ceil(601 / 7)
    # The h5 stack's frames are 601-605: one in the pass that ends the big stack, four in the next.
    assert reports["h5"] == [(1, 5, "frames"), (5, 5, "frames")] and whole_reports["h5"] == [(5, 5, "frames")]


def test_the_next_pass_is_decoded_while_the_device_runs_the_current_one(
    analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[str] = []
    decode, launch, finish = digits_module.decode_frames, analyzer._launch, analyzer._finish

    def logged(name: str, fn):
        def wrapper(*args):
            log.append(name)
            return fn(*args)
        return wrapper

    monkeypatch.setattr(digits_module, "decode_frames", logged("decode", decode))
    monkeypatch.setattr(analyzer, "_launch", logged("launch", launch))
    monkeypatch.setattr(analyzer, "_finish", logged("finish", finish))
    monkeypatch.setattr(analyzer, "items_per_pass", 1)
    results = analyzer.predict([Item(str(i), npy(d), NPY) for i, (d, _) in enumerate(sample[:3])])
    assert [r["digit"] for r in results] == [label for _, label in sample[:3]]
    assert log == ["decode", "launch", "decode", "finish", "launch", "decode", "finish", "launch", "finish"]


def test_the_autocast_path_keeps_float32_probabilities(
    analyzer: DigitsAnalyzer, heldout: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA alone autocasts in production; forcing it on the CPU runs the same code, reduced precision and all."""
    x, y = heldout
    full = run_one(analyzer, npy(x), NPY)
    monkeypatch.setattr(analyzer, "amp_dtype", torch.bfloat16)
    reduced = run_one(analyzer, npy(x), NPY)
    accuracy = [np.mean([f["digit"] == t for f, t in zip(r["frames"], y, strict=True)]) for r in (full, reduced)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.005
    image = run_one(analyzer, npy(x[0]), NPY)
    assert abs(sum(image["probabilities"]) - 1) < 1e-5


def test_a_malformed_precision_setting_stops_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUQ_PRECISION", "half")
    with pytest.raises(ValueError, match="GPUQ_PRECISION"):
        DigitsAnalyzer().setup("cpu")
    monkeypatch.setenv("GPUQ_PRECISION", "fp32")
    analyzer = DigitsAnalyzer()
    analyzer.setup("cpu")
    assert analyzer.amp_dtype is None and not analyzer.model.training  # type: ignore[union-attr]


# -- errors -----------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _h5_without_datasets() -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_group("empty/group")
        f.attrs["note"] = "no data here"
    return buf.getvalue()


def _h5_external_link() -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["outside"] = h5py.ExternalLink("/etc/some-file.h5", "/data")
    return buf.getvalue()


def _npy_huge_header() -> bytes:
    # Claims 10^12 float64 elements but carries none: must fail before allocating.
    header = npy(np.zeros((2, 2)))
    return header.replace(b"(2, 2)", b"(1000000, 1000000)")[:128]


BAD_INPUTS = {
    "not-an-image": (b"\x89PNG\r\n\x1a\n" + b"this is not a png" * 10, PNG, {}, "could not decode"),
    "text-as-jpeg": (b"\xff\xd8\xff" + b"hello" * 20, JPEG, {}, "could not decode"),
    "over-our-pixel-limit": (_png_header_only(8_000, 6_000), PNG, {}, str(MAX_PIXELS)),
    "decompression-bomb": (_png_header_only(30_000, 30_000), PNG, {}, str(MAX_PIXELS)),
    "blank-image": (encode(Image.new("L", (50, 50), 255), "PNG"), PNG, {}, "blank"),
    "pickled-npy": (npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True), NPY, {}, "dtype object"),
    "string-npy": (npy(np.array([["a", "b"], ["c", "d"]])), NPY, {}, "dtype"),
    "nan-npy": (npy(np.full((8, 8), np.nan)), NPY, {}, "nan"),
    "inf-npy": (npy(np.array([[1.0, np.inf], [0.0, 2.0]])), NPY, {}, "infinite"),
    "4d-npy": (npy(np.zeros((2, 3, 8, 8))), NPY, {}, "shape"),
    "1d-npy": (npy(np.arange(64.0)), NPY, {}, "shape"),
    "empty-npy": (npy(np.zeros((0, 8, 8))), NPY, {}, "empty"),
    "truncated-npy": (npy(np.ones((8, 8)))[:-10], NPY, {}, "truncated"),
    "huge-header-npy": (_npy_huge_header(), NPY, {}, "limit"),
    "garbage-npy": (b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage" + b" " * 64, NPY, {}, "not a valid .npy"),
    "unknown-npy-version": (b"\x93NUMPY garbage", NPY, {}, "not supported"),
    "h5-no-datasets": (_h5_without_datasets(), H5, {}, "no datasets"),
    "h5-missing-dataset": (h5({"frames": np.zeros((8, 8))}), H5, {"dataset": "nope"}, "no dataset"),
    "h5-group-not-dataset": (_h5_without_datasets(), H5, {"dataset": "empty"}, "group"),
    "h5-external-link": (_h5_external_link(), H5, {"dataset": "outside"}, "external link"),
    "h5-4d": (h5({"frames": np.zeros((1, 2, 8, 8))}), H5, {}, "shape"),
    "h5-nan": (h5({"frames": np.full((2, 8, 8), np.nan, np.float32)}), H5, {}, "nan"),
    "h5-garbage": (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, H5, {}, "could not read"),
    "json-input": ({"x": 1}, None, {}, "expected an uploaded file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_invalid_input(analyzer: DigitsAnalyzer, case: str) -> None:
    data, media_type, params, fragment = BAD_INPUTS[case]
    assert_invalid(run_one(analyzer, data, media_type, params), fragment)


def test_bad_item_fails_only_itself(analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]]) -> None:
    (d0, l0), (d1, l1) = sample[0], sample[5]
    batch = [
        Item("a", encode(gray_u8(ink(d0)), "PNG"), PNG),
        Item("b", b"\x89PNG\r\n\x1a\nbroken", PNG),
        Item("c", npy(np.stack([d1, d0])), NPY),
        Item("d", npy(np.full((3, 3), np.nan)), NPY),
    ]
    results = analyzer.predict(batch)
    assert len(results) == 4
    assert results[0]["digit"] == l0
    assert_invalid(results[1])
    assert [f["digit"] for f in results[2]["frames"]] == [l1, l0]
    assert_invalid(results[3], "nan")
    assert all(isinstance(r, AnalyzerError) for r in analyzer.predict(batch[1:2] + batch[3:]))


def test_cuda_oom_becomes_out_of_memory(
    analyzer: DigitsAnalyzer, sample: list[tuple[np.ndarray, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(analyzer.model, "forward", boom)
    with pytest.raises(OutOfMemory):
        analyzer.predict([Item("a", npy(sample[0][0]), NPY)])


# -- weights and catalog ----------------------------------------------------------


def test_missing_and_corrupt_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        DigitsAnalyzer(tmp_path / "nope.safetensors").setup("cpu")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(WeightsError, match="unreadable"):
        DigitsAnalyzer(bad).setup("cpu")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(WEIGHTS_PATH.read_bytes()[:-100])
    with pytest.raises(WeightsError):
        load_model(truncated)


def test_weights_are_small_and_predict_needs_setup() -> None:
    assert WEIGHTS_PATH.stat().st_size < 100_000
    with pytest.raises(RuntimeError, match="setup"):
        DigitsAnalyzer().predict([])


def test_spec() -> None:
    spec = DigitsAnalyzer.spec()
    assert spec["name"] == "digits" and spec["version"] == "1"
    assert set(spec["media_types"]) == {PNG, JPEG, NPY, H5}
    assert spec["input_schema"] is None
    assert spec["params_schema"]["additionalProperties"] is False
    assert set(spec["params_schema"]["properties"]) == {"dataset"}
    assert spec["max_input_bytes"] == 50 * 1024 * 1024
    assert spec["batching"] == {"max_batch_size": 64, "max_wait_ms": 5}
    json.dumps(spec)
