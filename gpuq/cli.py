"""The ``gpuq`` command: ``gpuq up`` (local stack), ``gpuq worker`` (GPU workers), ``gpuq api``,
and the client commands of ``gpuq.commands`` (submit, status, wait, cancel, analyzers, batch)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gpuq import commands as client_commands

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuq", description="A job service for PyTorch models on GPUs.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="run Redis, the API, the workers and Flower on this machine")
    worker = commands.add_parser("worker", help="start one worker per GPU (or CPU workers) and supervise them")
    worker.add_argument("--cpu-workers", type=int, help="CPU workers to start when there is no GPU (default 1)")
    api = commands.add_parser("api", help="serve the HTTP API with gunicorn")
    api.add_argument("--port", type=int, help="port (default GPUQ_API_PORT or 8000)")
    client_commands.register(commands)
    args = parser.parse_args(argv)

    if args.command in client_commands.COMMANDS:
        return client_commands.run(args)

    if args.command == "up":
        from gpuq.stack import run_stack

        return run_stack()
    if args.command == "worker":
        if args.cpu_workers is not None:
            os.environ["GPUQ_CPU_WORKERS"] = str(args.cpu_workers)
        from gpu_worker.launcher import main as launch

        return launch()
    if args.port is not None:
        os.environ["GPUQ_API_PORT"] = str(args.port)
    config = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(config)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
