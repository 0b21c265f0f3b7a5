"""Write examples/seven.png: a held-out scikit-learn seven, upscaled, black on white.

The digit comes from the test side of the training script's split, so the
model never saw it. Smooth (bicubic) upscaling, a slight blur and a soft threshold make the
8x8 blocks look like a pen stroke.

    python examples/make_seven.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_digits import heldout_split  # noqa: E402

__all__ = ["OUT", "make_seven"]

OUT = Path(__file__).with_name("seven.png")


def make_seven(out: Path = OUT, size: int = 128, which: int = 2) -> Path:
    """Render the ``which``-th held-out seven (the third reads most clearly as a 7)."""
    _, x_test, _, y_test = heldout_split()
    seven = x_test[np.flatnonzero(y_test == 7)[which]]
    # A blank 1-block border first, so the smooth upscale does not clip the strokes.
    blocks = np.pad(seven, 1) / 16
    ink = Image.fromarray(np.round(blocks * 255).astype(np.uint8))
    ink = ink.resize((size, size), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(size / 40))
    # A soft threshold turns the blur into a stroke with smooth, pen-like edges.
    a = np.clip((np.asarray(ink, np.float32) / 255 - 0.35) / 0.2, 0, 1)
    Image.fromarray(np.round(255 * (1 - a)).astype(np.uint8)).save(out, optimize=True)  # black on white
    return out


if __name__ == "__main__":
    print(f"wrote {make_seven()}")
