"""``python -m api.keygen TENANT``: a new API key, and the ``GPUQ_API_KEYS`` entry that holds its hash."""

from __future__ import annotations

import sys

from api.auth import new_key

__all__ = ["main"]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m api.keygen TENANT   (prints a new key, and its GPUQ_API_KEYS entry)", file=sys.stderr)
        return 2
    try:
        key, entry = new_key(argv[0])
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"key (give it to the tenant; it is not stored anywhere): {key}")
    print(f"GPUQ_API_KEYS entry: {entry}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
