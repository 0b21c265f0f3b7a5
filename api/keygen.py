"""``python -m api.keygen TENANT``: a new API key, and the ``GPUQ_API_KEYS`` entry that holds its hash."""

from __future__ import annotations

import argparse
import sys

from api.auth import new_key

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m api.keygen",
        description="Make a new API key for a tenant. Prints the key, which is stored nowhere (give it to "
                    "the tenant), and the GPUQ_API_KEYS entry (tenant:sha256hex) that the API needs: "
                    "comma-separate several entries.",
    )
    parser.add_argument("tenant", metavar="TENANT",
                        help="the tenant the key belongs to: 1 to 64 letters, digits, '.', '_' or '-'")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        # new_key checks the name against the rule the API applies to GPUQ_API_KEYS entries.
        key, entry = new_key(args.tenant)
    except ValueError as error:
        parser.error(str(error))
    print(f"key (give it to the tenant; it is not stored anywhere): {key}")
    print(f"GPUQ_API_KEYS entry: {entry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
