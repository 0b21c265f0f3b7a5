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

import contextlib
import io
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
#: Most bytes decoding one .npy or HDF5 array may hold: the array in its own
#: dtype, an HDF5 chunk being decompressed and the work of one frame. A
#: compressed (or never written, fill-value) HDF5 dataset of a few KiB can
#: otherwise claim gigabytes.
MAX_DECODED_BYTES = 256 * 2**20
#: Images larger than this (longest side) are shrunk first: 8x8 needs no more.
_WORK_SIDE = 512
#: Fraction of the ink's full strength that counts as ink when cropping; lower
#: levels are background noise (JPEG ringing, paper texture).
_INK_THRESHOLD = 0.3
#: A frame is turned into ink levels (float64) at most this many values at a
#: time (4 MiB): a big frame then costs little more than its own bytes.
_TILE_VALUES = 2**19
#: Stack frames are read (from HDF5: decompressed) about this many bytes at a time.
_READ_BYTES = 16 * 2**20

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
        stack = array if array.ndim == 3 else array[None]
        return _stack_to_frames(stack.__getitem__, stack.shape, stack.dtype, single=array.ndim == 2), array.ndim == 3
    if media_type == "application/x-hdf5":
        dataset = params.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise InvalidInput("params.dataset must be a string")
        return _decode_h5(data, dataset), True
    raise InvalidInput(f"unsupported media type {media_type!r}; expected one of {', '.join(MEDIA_TYPES)}")


# -- one frame ---------------------------------------------------------------


def to_digit_frame(gray: np.ndarray, *, blank_ok: bool = False) -> np.ndarray:
    """One 2-D grayscale frame (any size, any range, either polarity) -> (8, 8) float32 in 0..16.

    A frame without contrast has no digit: it becomes zeros when ``blank_ok``
    (a frame in a stack must not fail its neighbours), else ``InvalidInput``.
    The frame stays in its own dtype: it is turned into float ink levels a tile
    at a time, so a big frame never has a float copy of its own size.
    """
    frame = np.asarray(gray)
    if frame.dtype == np.bool_:
        frame = frame.view(np.uint8)  # the border's median needs numbers
    lo, hi = float(frame.min()), float(frame.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidInput("the array contains NaN or infinite values")
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return _blank(blank_ok, "the image is blank: it has no contrast, so no digit can be found")
    levels = _InkLevels.measure(frame, lo, hi)
    if levels.peak <= 1e-12:
        return _blank(blank_ok, "the image is blank: no ink stands out from its background")
    ink = _ink_reader(frame, levels)
    small = _square_to_8x8(ink, _ink_box(ink, frame.shape))
    top = float(small.max())
    if top <= 0:
        return np.zeros((8, 8), np.float32)
    # Strokes in big images are thin next to the 4x4 blocks the digits were
    # counted in; scaling the strongest block to 16 restores their contrast.
    return (small * (16.0 / top)).astype(np.float32)


def _blank(blank_ok: bool, message: str) -> np.ndarray:
    if blank_ok:
        return np.zeros((8, 8), np.float32)
    raise InvalidInput(message)


@dataclass(frozen=True)
class _InkLevels:
    """How a frame's values map to ink levels: its background 0, its strongest ink 1.

    Measured once on the frame's border, then applied a tile at a time with
    the very operations, in the same order, that a whole-frame float64 copy
    would go through: a tile's levels are those of that copy, to the bit.
    """

    lo: float
    span: float
    flip: bool
    background: float
    peak: float

    @classmethod
    def measure(cls, frame: np.ndarray, lo: float, hi: float) -> _InkLevels:
        span = hi - lo
        ring = _border(frame, np.float64)
        ring -= lo
        ring /= span
        # The border is background: if it is light, the ink is dark, so flip.
        flip = bool(ring.mean() > 0.5)
        if flip:
            np.subtract(1.0, ring, out=ring)
        # Background to 0 (its median, so a few ink pixels touching the edge do
        # not shift it), ink to 1.
        background = float(np.median(ring, overwrite_input=True))
        # Normalised (flipped or not), the frame's strongest value is exactly
        # 1.0: what the strongest ink keeps above the background is known
        # without a pass over the frame.
        return cls(lo, span, flip, background, peak=max(1.0 - background, 0.0))

    def of(self, tile: np.ndarray) -> np.ndarray:
        """Ink levels (float64, 0..1) of part of the frame."""
        g = tile.astype(np.float64)
        g -= self.lo
        g /= self.span
        if self.flip:
            np.subtract(1.0, g, out=g)
        g -= self.background
        np.clip(g, 0.0, None, out=g)
        g /= self.peak
        return g


#: Ink levels of the frame's rows and columns named by two slices.
_InkReader = Callable[[slice, slice], np.ndarray]


def _ink_reader(frame: np.ndarray, levels: _InkLevels) -> _InkReader:
    if frame.size <= _TILE_VALUES:
        whole = levels.of(frame)  # small: converted once, then read twice
        return lambda rows, cols: whole[rows, cols]
    return lambda rows, cols: levels.of(frame[rows, cols])


def _border(g: np.ndarray, dtype: Any = None) -> np.ndarray:
    """The outer ring of ``g`` (as ``dtype``): a few pixels wide on big images, one on small ones."""
    k = _border_width(g.shape)
    return np.concatenate([g[:k].ravel(), g[-k:].ravel(), g[k:-k, :k].ravel(), g[k:-k, -k:].ravel()], dtype=dtype)


def _border_width(shape: tuple[int, ...]) -> int:
    return max(1, min(shape) // 32)


def _tiles(height: int, width: int, row_width: int) -> Iterator[tuple[slice, list[slice]]]:
    """Rows in groups that take about ``_TILE_VALUES`` values when each row is
    ``row_width`` wide, with each group's columns cut into tiles of at most that many."""
    rows_per_group = max(1, _TILE_VALUES // row_width)
    columns = [slice(c, min(width, c + _TILE_VALUES)) for c in range(0, width, _TILE_VALUES)]
    for r in range(0, height, rows_per_group):
        yield slice(r, min(height, r + rows_per_group)), columns


def _ink_box(ink: _InkReader, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of the ink's bounding box (levels from ``_INK_THRESHOLD`` up)."""
    inked_rows, inked_cols = np.zeros(shape[0], bool), np.zeros(shape[1], bool)
    for rows, columns in _tiles(*shape, row_width=shape[1]):
        for cols in columns:
            mask = ink(rows, cols) >= _INK_THRESHOLD
            inked_rows[rows] |= mask.any(1)
            inked_cols[cols] |= mask.any(0)
    rows, cols = np.flatnonzero(inked_rows), np.flatnonzero(inked_cols)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _square_to_8x8(ink: _InkReader, box: tuple[slice, slice]) -> np.ndarray:
    """Centre the ink's box in a square of its longer side, and area-average that to 8x8.

    No margin: scikit-learn's digits span all 8 rows (the width varies), so a
    tall digit must fill the height as theirs do. Pillow's BOX resize averages
    each row across first, then down the columns of those averages: doing the
    rows a group at a time gives the same numbers without the whole square.
    """
    rows, cols = box
    height, width = rows.stop - rows.start, cols.stop - cols.start
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    if side * side <= _TILE_VALUES:  # small: the whole square, in one resize
        square = np.zeros((side, side), np.float32)
        square[top : top + height, left : left + width] = ink(rows, cols)
        return _resize(square, 8, 8)
    across = np.zeros((side, 8), np.float32)  # each row of the square averaged to 8 values
    for group, tiles in _tiles(height, width, row_width=side):
        square_rows = np.zeros((group.stop - group.start, side), np.float32)
        for tile in tiles:
            square_rows[:, left + tile.start : left + tile.stop] = ink(
                slice(rows.start + group.start, rows.start + group.stop),
                slice(cols.start + tile.start, cols.start + tile.stop),
            )
        across[top + group.start : top + group.stop] = _resize(square_rows, 8, len(square_rows))
    return _resize(across, 8, 8)


def _resize(g: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average (antialiased) ``g`` to width x height, like counting pixels in blocks."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(g, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BOX), dtype=np.float32)


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
            # Photos carry their rotation in EXIF. In place: otherwise an
            # image that needs no turning is copied whole.
            ImageOps.exif_transpose(img, in_place=True)
            gray = _to_gray(img)
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"image is too large to decode safely (the limit is {MAX_PIXELS} pixels): {exc}") from exc
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... for broken files
        raise InvalidInput(f"could not decode the {fmt} image: {exc}") from exc
    return to_digit_frame(gray)


def _to_gray(img: Any) -> np.ndarray:
    """A Pillow image of any mode -> 2-D float array (its own range), shrunk to work size.

    Shrunk in Pillow, on integer pixels, before anything becomes float32 (a
    40-megapixel RGBA image would otherwise take 640 MB), and before any
    conversion that would copy it whole into a wider mode, where shrinking
    first gives the same pixels.
    """
    if img.mode.startswith("I;16"):
        # 16-bit grayscale: keep the precision; the range is normalised later.
        # Pillow rounds a 16-bit resize as it does a 32-bit one.
        img = _shrink_to_work_size(img).convert("I")
    elif img.mode == "LA":
        img = _shrink_to_work_size(img).convert("RGBA")  # its alpha is premultiplied for the resize either way
    elif img.mode not in ("I", "F"):
        has_alpha = img.mode in ("RGBA", "PA", "La", "RGBa") or "transparency" in img.info
        mode = "RGBA" if has_alpha else "L"
        if img.mode != mode:  # converting to its own mode would copy it
            img = img.convert(mode)
    img = _shrink_to_work_size(img)
    arr = np.asarray(img, dtype=np.float32)
    return _flatten_alpha(arr) if img.mode == "RGBA" else arr


def _shrink_to_work_size(img: Any) -> Any:
    from PIL import Image

    if max(img.size) <= _WORK_SIDE:
        return img
    scale = _WORK_SIDE / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BOX)


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


def _check_array(shape: tuple[int, ...], dtype: np.dtype, what: str, chunk_bytes: int = 0) -> None:
    """Refuse arrays that are not a 2-D image or a 3-D stack of numbers, or are too big to decode.

    ``chunk_bytes``: the size of one HDF5 chunk, decompressed whole to read any part of it.
    """
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
    held = size * dtype.itemsize + chunk_bytes + _frame_work_bytes(*shape[-2:])
    if held > MAX_DECODED_BYTES:
        raise InvalidInput(
            f"{what} takes {held} bytes once read, with the work of decoding it; the limit is {MAX_DECODED_BYTES}"
        )


def _frame_work_bytes(height: int, width: int) -> int:
    """What ``to_digit_frame`` holds besides the frame and its fixed-size tiles."""
    k = _border_width((height, width))
    ring = 2 * k * width + 2 * k * max(0, height - 2 * k)  # as many values as _border takes
    side = max(height, width)
    # The ring in float64; the padded square's rows averaged to 8 float32 each,
    # and one row of the square (when it is wider than a tile), both with
    # Pillow's copy.
    return 8 * ring + 2 * 4 * (8 + 1) * side


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


def _decode_h5(data: bytes, name: str | None) -> np.ndarray:
    """The dataset's frames, read from the file a few at a time."""
    import h5py

    with _h5_errors():
        f = h5py.File(io.BytesIO(data), "r")
    with f:
        with _h5_errors():
            ds = _find_dataset(f, name)
            shape, dtype = tuple(ds.shape), ds.dtype
            # A chunk is decompressed whole, even to read one frame of it.
            chunk_bytes = int(np.prod(ds.chunks, dtype=np.int64)) * dtype.itemsize if ds.chunks else 0
            _check_array(shape, dtype, f"HDF5 dataset {ds.name!r}", chunk_bytes)
            # External storage and virtual datasets read other files: not the
            # uploader's to name on this machine.
            if ds.external or ds.is_virtual:
                raise InvalidInput(f"HDF5 dataset {ds.name!r} refers to data outside the file; not supported")

        def read(frames: slice) -> np.ndarray:
            with _h5_errors():
                return np.asarray(ds[frames] if ds.ndim == 3 else ds[()][None])

        stack_shape = shape if len(shape) == 3 else (1, *shape)
        # Whole chunks along the frames, so that no chunk is decompressed twice.
        chunk_frames = ds.chunks[0] if ds.chunks and len(shape) == 3 else 1
        return _stack_to_frames(read, stack_shape, dtype, single=len(shape) == 2, chunk_frames=chunk_frames)


@contextlib.contextmanager
def _h5_errors() -> Iterator[None]:
    """h5py raises OSError/KeyError/ValueError... for broken or odd files: those are the client's."""
    try:
        yield
    except (InvalidInput, MemoryError):
        raise
    except Exception as exc:
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


def _stack_to_frames(
    read: Callable[[slice], np.ndarray],
    shape: tuple[int, int, int],
    dtype: np.dtype,
    *,
    single: bool,
    chunk_frames: int = 1,
) -> np.ndarray:
    """A checked (N, H, W) stack of numbers -> (N, 8, 8) float32 digits frames.

    ``read(frames)`` returns the frames a slice names: read a few at a time,
    so that an HDF5 stack is never held decompressed all at once.
    """
    count, height, width = shape
    if (height, width) == (8, 8) and dtype != np.bool_:
        whole = read(slice(None))  # at most MAX_FRAMES * 64 values
        lo, hi = whole.min(), whole.max()
        # Already in the digits' own scale (e.g. sklearn's load_digits().images).
        # Values only up to 1 are 0..1 data (or a mask), not digits-scale: those
        # are normalised like any other frame. NaN fails both tests: such a
        # stack goes frame by frame, where it is refused.
        if lo >= 0 and 1 < hi <= 16:
            return whole.astype(np.float32)
        batches: Iterator[np.ndarray] = iter([whole])
    else:
        per_read = max(1, _READ_BYTES // (height * width * dtype.itemsize))
        per_read = max(chunk_frames, per_read // chunk_frames * chunk_frames)
        batches = (read(slice(start, start + per_read)) for start in range(0, count, per_read))
    frames = np.empty((count, 8, 8), np.float32)
    done = 0
    for batch in batches:
        for frame in batch:
            frames[done] = to_digit_frame(frame, blank_ok=not single)
            done += 1
    return frames
