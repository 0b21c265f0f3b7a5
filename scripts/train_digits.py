"""Train the ``digits`` analyzer's CNN and write its weights.

Deterministic: fixed seeds, one CPU thread, deterministic kernels, and a fixed
held-out split, so re-running it reproduces the shipped
``gpu_worker/analyzers/digits.safetensors``. Takes a few seconds on a CPU.

    python scripts/train_digits.py [--out PATH] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_worker.analyzers.digits_model import ARCH, WEIGHTS_PATH, build_model  # noqa: E402
from gpu_worker.decoding import to_digit_frame  # noqa: E402

__all__ = ["SEED", "TEST_SIZE", "evaluate", "heldout_split", "main", "roundtrip", "train"]

SEED = 0
TEST_SIZE = 0.25


def heldout_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): float32 (N, 8, 8) in 0..16 and int64 labels.

    The tests import this, so the accuracy they check is on digits the model
    never saw.
    """
    digits = load_digits()
    x = digits.images.astype(np.float32)
    y = digits.target.astype(np.int64)
    return tuple(train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y))  # type: ignore[return-value]


def roundtrip(x: np.ndarray, size: int, resample: int) -> np.ndarray:
    """Each 8x8 digit upscaled to size x size as an 8-bit image, then decoded back.

    Uploads reach the model through ``gpu_worker.decoding`` (recentred, blurred
    by interpolation, rescaled); training on such copies too keeps the model as
    accurate on uploaded images as on the 8x8 originals.
    """
    from PIL import Image

    out = []
    for im in x:
        img = Image.fromarray(np.round(im * (255 / 16)).astype(np.uint8)).resize((size, size), resample)
        out.append(to_digit_frame(np.asarray(img, np.float32), blank_ok=True))
    return np.stack(out)


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel each way (zero fill): real inputs are not
    perfectly centred, and 1347 training images are few."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(8))[:, :, None]
    cols = (dx[:, None] + torch.arange(8))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols]


def train(x: np.ndarray, y: np.ndarray, epochs: int = 30, batch_size: int = 64) -> torch.nn.Module:
    """Train a fresh network on (x, y) with Adam and a cosine learning-rate schedule."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = build_model()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            xb = _shift(xt[idx], gen)
            # Random contrast: decoded uploads do not always reach exactly 16.
            xb = xb * torch.empty(len(idx), 1, 1).uniform_(0.7, 1.0, generator=gen)
            loss = F.cross_entropy(model(xb), yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of ``model`` on (x, y)."""
    pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="where to write the safetensors weights")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)

    # One thread and deterministic kernels: the same bytes on every machine we tried.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    from PIL import Image

    x_train, x_test, y_train, y_test = heldout_split()
    began = time.perf_counter()
    # Originals plus two decoded round trips (bilinear and bicubic upscales).
    x_all = np.concatenate(
        [x_train, roundtrip(x_train, 64, Image.Resampling.BILINEAR), roundtrip(x_train, 128, Image.Resampling.BICUBIC)]
    )
    y_all = np.concatenate([y_train] * 3)
    model = train(x_all, y_all, epochs=args.epochs)
    took = time.perf_counter() - began
    acc = evaluate(model, x_test, y_test)
    acc_png = evaluate(model, roundtrip(x_test, 128, Image.Resampling.BILINEAR), y_test)
    print(
        f"trained on {len(x_train)} digits ({len(x_all)} with round trips) in {took:.1f}s; "
        f"held-out accuracy {acc:.4f} on the 8x8 digits, {acc_png:.4f} through 128x128 images ({len(x_test)} digits)"
    )

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key: safetensors writes several in random order, which would
    # make re-runs differ byte-wise.
    save_file(state, str(args.out), metadata={"arch": ARCH})
    os.chmod(args.out, 0o644)  # safetensors writes 0600; the worker may run as another user
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0 if acc >= 0.97 else 1


if __name__ == "__main__":
    sys.exit(main())
