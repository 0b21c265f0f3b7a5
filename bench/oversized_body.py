"""How fast, and at what memory, the API refuses a body far over the analyzer's limit.

A stack of its own (Redis, one worker serving ``noop``, whose input limit is
64 KiB, and one API process). Four clients at once each send a 60 MiB body,
declared by ``Content-Length`` and then chunked, and the time until the
``413`` arrives is taken from the client's first byte. The baseline, in the
same run: a small valid submit's answer time. Printed: the milliseconds, their
ratio to the baseline, and the API process's peak RSS (VmHWM).

    .venv/bin/python bench/oversized_body.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

__all__ = ["SIXTY_MIB", "api_peak_rss_mb", "send_oversized"]

SIXTY_MIB = 60 * 2**20
_PIECE = 64 * 1024


def send_oversized(url: str, *, chunked: bool, mimetype: str = "application/json",
                   headers: str = "") -> tuple[bytes, float]:
    """POST a 60 MiB body (declared, or chunked) to ``url``/v1/jobs; the answer's status line and the
    seconds from the first byte sent until it came. The body goes on being sent until the answer comes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    started = time.monotonic()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {SIXTY_MIB}"
    sock.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\n{headers}"
                  f"Content-Type: {mimetype}\r\n{framing}\r\n\r\n").encode())
    answered = threading.Event()

    def send_body() -> None:
        # Valid JSON of exactly 60 MiB, so that a server that reads it all finds nothing else wrong with it.
        head, tail = b'{"analyzer": "noop", "input": "', b'"}'
        sent = 0
        try:
            while not answered.is_set() and sent < SIXTY_MIB:
                piece = head if sent == 0 else b"x" * min(_PIECE, SIXTY_MIB - sent - len(tail))
                piece = piece or tail
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked and not answered.is_set():
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed its side: it has answered

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        sock.settimeout(60)
        seen = b""
        while b"\r\n" not in seen and (chunk := sock.recv(4096)):
            seen += chunk
        return seen.split(b"\r\n", 1)[0], time.monotonic() - started
    finally:
        answered.set()
        sock.close()
        sender.join(5)


def api_peak_rss_mb(master_pid: int) -> dict[int, float]:
    """VmHWM of each gunicorn worker under ``master_pid``, in MB."""
    peaks = {}
    for pid in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks[int(pid)] = int(line.split()[1]) / 1024
    return peaks


def main() -> None:
    from tests.stack import Stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        stack = Stack(Path(work), analyzers="noop").start()
        try:
            small = []
            for _ in range(args.rounds * 4):
                began = time.monotonic()
                response = requests.post(f"{stack.url}/v1/jobs", json={"analyzer": "noop", "input": "x"}, timeout=10)
                small.append(time.monotonic() - began)
                assert response.status_code == 202, response.text
            baseline = sorted(small)[len(small) // 2]
            print(f"baseline: a small submit answers in {baseline * 1000:.1f} ms (median of {len(small)})")
            for chunked in (False, True):
                times, statuses = [], Counter()
                for _ in range(args.rounds):
                    with ThreadPoolExecutor(4) as pool:
                        answers = list(pool.map(lambda c: send_oversized(stack.url, chunked=c), [chunked] * 4))
                    times += [seconds for _, seconds in answers]
                    statuses.update(line.decode() for line, _ in answers)
                worst, median = max(times), sorted(times)[len(times) // 2]
                print(f"60 MiB body, {'chunked' if chunked else 'Content-Length'}, 4 at once x {args.rounds}: "
                      f"413 in {median * 1000:.1f} ms median ({median / baseline:.1f}x the small submit), "
                      f"{worst * 1000:.1f} ms worst; answers: {dict(statuses)}")
            print(f"API processes' peak RSS: {api_peak_rss_mb(stack.api_process.pid)} MB")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
