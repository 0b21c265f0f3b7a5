"""Turn uploaded bytes into 8x8 frames in scikit-learn's digits format.

scikit-learn's digits are 32x32 binary bitmaps, cropped so the digit spans the
full height, centred, and counted in 4x4 blocks: 8x8 values 0..16 with the ink
high and the background 0. Uploads are brought to the same form: grayscale,
ink made bright, cropped to the ink, padded to a square, area-averaged down to
8x8, and scaled so the darkest ink reads 16.

No torch here: decoding runs before (and apart from) the device. Everything
that goes wrong raises ``InvalidInput`` with a message meant for the client.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from gpu_worker.analyzer import InvalidInput

__all__ = [
    "MAX_DECODED_BYTES",
    "MAX_ELEMENTS",
    "MAX_FRAMES",
    "MAX_PIXELS",
    "MEDIA_TYPES",
    "decode_frames",
    "to_digit_frame",
]

#: Largest image accepted, in pixels (width * height): stops decompression bombs.
MAX_PIXELS = 40_000_000
#: Most frames in one stack (.npy or HDF5).
MAX_FRAMES = 100_000
#: Most array elements in one .npy or HDF5 dataset (256 MiB as float32).
MAX_ELEMENTS = 64 * 2**20
#: Most bytes one .npy or HDF5 array may take once read: a compressed (or never
#: written, fill-value) HDF5 dataset of a few KiB can otherwise claim gigabytes.
MAX_DECODED_BYTES = 256 * 2**20
#: Images larger than this (longest side) are shrunk first: 8x8 needs no more.
_WORK_SIDE = 512
#: Fraction of the ink's full strength that counts as ink when cropping; lower
#: levels are background noise (JPEG ringing, paper texture).
_INK_THRESHOLD = 0.3

MEDIA_TYPES = ("image/png", "image/jpeg", "application/x-npy", "application/x-hdf5")


def decode_frames(data: bytes, media_type: str | None, params: dict[str, Any] | None = None) -> tuple[np.ndarray, bool]:
    """Decode an upload into float32 frames shaped (N, 8, 8), values 0..16, ink high.

    Returns ``(frames, is_stack)``: ``is_stack`` is False for one image (a PNG,
    a JPEG, or a 2-D .npy; N == 1) and True for a stack (a 3-D .npy or any
    HDF5 dataset). ``params`` may name the HDF5 dataset (``"dataset"``).
    """
    params = params or {}
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput("expected an uploaded file")
    data = bytes(data)
    if media_type in ("image/png", "image/jpeg"):
        return _decode_image(data, media_type)[None], False
    if media_type == "application/x-npy":
        array = _load_npy(data)
        return _array_to_frames(array), array.ndim == 3
    if media_type == "application/x-hdf5":
        dataset = params.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise InvalidInput("params.dataset must be a string")
        return _array_to_frames(_load_h5(data, dataset)), True
    raise InvalidInput(f"unsupported media type {media_type!r}; expected one of {', '.join(MEDIA_TYPES)}")


# -- one frame ---------------------------------------------------------------


def to_digit_frame(gray: np.ndarray, *, blank_ok: bool = False) -> np.ndarray:
    """One 2-D grayscale frame (any size, any range, either polarity) -> (8, 8) float32 in 0..16.

    A frame without contrast has no digit: it becomes zeros when ``blank_ok``
    (a frame in a stack must not fail its neighbours), else ``InvalidInput``.
    """
    g = np.asarray(gray, dtype=np.float64)
    lo, hi = float(g.min()), float(g.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        if blank_ok:
            return np.zeros((8, 8), np.float32)
        raise InvalidInput("the image is blank: it has no contrast, so no digit can be found")
    g = (g - lo) / (hi - lo)
    # The border is background: if it is light, the ink is dark, so flip.
    if _border(g).mean() > 0.5:
        g = 1.0 - g
    # Background to 0 (its median, so a few ink pixels touching the edge do not
    # shift it), ink to 1.
    g = np.clip(g - float(np.median(_border(g))), 0.0, None)
    peak = float(g.max())
    if peak <= 1e-12:
        if blank_ok:
            return np.zeros((8, 8), np.float32)
        raise InvalidInput("the image is blank: no ink stands out from its background")
    g /= peak
    g = _crop_to_square(g)
    small = _resize(g, 8)
    top = float(small.max())
    if top <= 0:
        return np.zeros((8, 8), np.float32)
    # Strokes in big images are thin next to the 4x4 blocks the digits were
    # counted in; scaling the strongest block to 16 restores their contrast.
    return (small * (16.0 / top)).astype(np.float32)


def _border(g: np.ndarray) -> np.ndarray:
    """The outer ring of ``g``: a few pixels wide on big images, one on small ones."""
    k = max(1, min(g.shape) // 32)
    return np.concatenate([g[:k].ravel(), g[-k:].ravel(), g[k:-k, :k].ravel(), g[k:-k, -k:].ravel()])


def _crop_to_square(g: np.ndarray) -> np.ndarray:
    """Crop to the ink's bounding box and centre it in a square of its longer side.

    No margin: scikit-learn's digits span all 8 rows (the width varies), so a
    tall digit must fill the height as theirs do.
    """
    mask = g >= _INK_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    g = g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = g.shape
    side = max(h, w)
    out = np.zeros((side, side), np.float64)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = g
    return out


def _resize(g: np.ndarray, side: int) -> np.ndarray:
    """Area-average (antialiased) ``g`` to side x side, like counting pixels in blocks."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(g, dtype=np.float32), mode="F")
    return np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.float32)


# -- images ------------------------------------------------------------------


def _decode_image(data: bytes, media_type: str) -> np.ndarray:
    from PIL import Image, ImageOps

    fmt = "PNG" if media_type == "image/png" else "JPEG"
    try:
        # Pillow warns (then errors) on huge images only above its own, higher
        # limit; make the warning an error and check our limit before decoding.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # formats=: parse only what was sniffed, not whatever Pillow can open.
            img = Image.open(io.BytesIO(data), formats=[fmt])
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise InvalidInput(f"image is {width}x{height} = {width * height} pixels; the limit is {MAX_PIXELS}")
            if fmt == "JPEG":
                # Let the JPEG decoder downscale by up to 8x for free.
                img.draft(None, (_WORK_SIDE, _WORK_SIDE))
            img.load()
            img = ImageOps.exif_transpose(img)  # photos carry their rotation in EXIF
            gray = _to_gray(img)
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image is too large to decode safely (the limit is {MAX_PIXELS} pixels): {exc}") from exc
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... for broken files
        raise InvalidInput(f"could not decode the {fmt} image: {exc}") from exc
    return to_digit_frame(gray)


def _to_gray(img: Any) -> np.ndarray:
    """A Pillow image of any mode -> 2-D float array (its own range), shrunk to work size."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        img = img.convert("I")  # 16/32-bit grayscale: keep the precision; the range is normalised later
    elif img.mode != "F":
        has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "L")
    # Shrink in Pillow, on 8-bit pixels, before anything becomes float32: a
    # 40-megapixel RGBA image would otherwise take 640 MB.
    if max(img.size) > _WORK_SIDE:
        scale = _WORK_SIDE / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)
    return _flatten_alpha(arr) if img.mode == "RGBA" else arr


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    """RGBA (0..255) -> luminance, composited over a background the ink stands out on.

    Drawings often have transparent paper; composite dark ink over white and
    light ink over black, so both keep their contrast.
    """
    lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    alpha = rgba[..., 3] / 255.0
    if alpha.min() >= 1.0:
        return lum
    weight = float(alpha.sum())
    ink = float((lum * alpha).sum() / weight) if weight > 0 else 0.0
    background = 255.0 if ink < 127.5 else 0.0
    return lum * alpha + background * (1.0 - alpha)


# -- arrays ------------------------------------------------------------------


def _check_array(shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    """Refuse arrays that are not a 2-D image or a 3-D stack of numbers, or are too big."""
    numeric = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_
    if dtype.hasobject or not numeric:
        raise InvalidInput(f"{what} has dtype {dtype}; expected integers, floats or booleans")
    if len(shape) not in (2, 3):
        raise InvalidInput(f"{what} has shape {shape}; expected (H, W) for one image or (N, H, W) for a stack")
    if any(n == 0 for n in shape):
        raise InvalidInput(f"{what} is empty (shape {shape})")
    if len(shape) == 3 and shape[0] > MAX_FRAMES:
        raise InvalidInput(f"{what} holds {shape[0]} frames; the limit is {MAX_FRAMES}")
    size = int(np.prod(shape, dtype=np.int64))
    if size > MAX_ELEMENTS:
        raise InvalidInput(f"{what} holds {size} elements; the limit is {MAX_ELEMENTS}")
    if size * dtype.itemsize > MAX_DECODED_BYTES:
        raise InvalidInput(f"{what} takes {size * dtype.itemsize} bytes once read; the limit is {MAX_DECODED_BYTES}")


def _load_npy(data: bytes) -> np.ndarray:
    """Parse a .npy file without pickle, checking the header before touching the data."""
    from numpy.lib import format as npy_format

    fp = io.BytesIO(data)
    try:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
        else:  # 3.0 exists only for structured dtypes with non-ASCII names
            raise InvalidInput(f".npy format version {version} is not supported")
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"not a valid .npy file: {exc}") from exc
    _check_array(tuple(shape), dtype, "the .npy array")
    count = int(np.prod(shape, dtype=np.int64))
    offset = fp.tell()
    if len(data) - offset < count * dtype.itemsize:
        raise InvalidInput(
            f"the .npy file is truncated: shape {tuple(shape)} needs {count * dtype.itemsize} data bytes"
        )
    # A view of the upload: no copy and no allocation sized by an untrusted header.
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def _load_h5(data: bytes, name: str | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            ds = _find_dataset(f, name)
            shape, dtype = tuple(ds.shape), ds.dtype
            _check_array(shape, dtype, f"HDF5 dataset {ds.name!r}")
            # External storage and virtual datasets read other files: not the
            # uploader's to name on this machine.
            if ds.external or ds.is_virtual:
                raise InvalidInput(f"HDF5 dataset {ds.name!r} refers to data outside the file; not supported")
            return np.asarray(ds[()])
    except InvalidInput:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError for broken or odd files
        raise InvalidInput(f"could not read the HDF5 file: {exc}") from exc


def _find_dataset(f: Any, name: str | None) -> Any:
    """The dataset ``name``, else "frames", else the first found (in name order)."""
    import h5py

    if name is not None:
        path = name.strip("/")
        if not path:
            raise InvalidInput("params.dataset must name a dataset, not the root group")
        # Walk the path one link at a time, refusing external links: they would
        # open files on this machine.
        node = f
        for part in path.split("/"):
            link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
            if link is None:
                raise InvalidInput(f"HDF5 file has no dataset {name!r}")
            if isinstance(link, h5py.ExternalLink):
                raise InvalidInput(f"HDF5 path {name!r} is an external link; not supported")
            node = node[part]
        if not isinstance(node, h5py.Dataset):
            raise InvalidInput(f"HDF5 object {name!r} is a group, not a dataset")
        return node
    if not isinstance(f.get("frames", getlink=True), h5py.ExternalLink) and isinstance(f.get("frames"), h5py.Dataset):
        return f["frames"]
    found: list[str] = []

    def visit(path: str, obj: Any) -> Any:
        if isinstance(obj, h5py.Dataset):
            found.append(path)
            return True  # stop at the first
        return None

    # visititems does not follow external links, so whatever it finds is in the file.
    f.visititems(visit)
    if not found:
        raise InvalidInput("HDF5 file holds no datasets")
    return f[found[0]]


def _array_to_frames(array: np.ndarray) -> np.ndarray:
    """A checked 2-D or 3-D numeric array -> (N, 8, 8) float32 digits frames."""
    stack = array if array.ndim == 3 else array[None]
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput("the array contains NaN or infinite values")
    if stack.shape[1:] == (8, 8) and array.dtype != np.bool_:
        lo, hi = stack.min(), stack.max()
        # Already in the digits' own scale (e.g. sklearn's load_digits().images).
        # Values only up to 1 are 0..1 data (or a mask), not digits-scale: those
        # are normalised like any other frame.
        if lo >= 0 and 1 < hi <= 16:
            return stack.astype(np.float32)
    single = array.ndim == 2
    return np.stack([to_digit_frame(frame, blank_ok=not single) for frame in stack]).astype(np.float32)
