"""Every example of the README runs as written, against a live stack like ``make up``'s.

The fenced ``sh`` and ``python`` blocks of README.md are the examples. Each runs
in the checkout, with the virtualenv active (its ``bin`` first on PATH, as the
README asks), against a stack of the suite's own: the analyzers of ``make up``
(``digits``, ``simulate``), no API keys. Only the API's port differs from
``make up``'s: ``localhost:8000`` and ``127.0.0.1:8000`` in a block are replaced
by the stack's address, and ``GPUQ_URL`` (the CLI's default is port 8000) names
it. A block that cannot run here (it starts a stack of its own, needs Docker,
GPUs, other hosts, or is an excerpt of a file) says so in its info string:
`````sh no-run``. Every other block runs, and its exit status must be 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stack import ROOT, Stack

README = ROOT / "README.md"
#: A fenced block, at the margin or indented in a list item (its lines then carry the indent too).
_FENCE = re.compile(r"^( *)```(\w+)([^\n]*)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)
_RUNNERS = {"sh": ["bash", "-euo", "pipefail", "-c"], "python": [sys.executable, "-c"]}
#: A block runs for at most this long: the longest waits for a job of a few seconds.
_TIMEOUT = 120


@dataclass(frozen=True)
class Example:
    language: str
    line: int
    code: str
    runs: bool

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def examples(path: Path = README) -> list[Example]:
    text = path.read_text()
    found = []
    for match in _FENCE.finditer(text):
        language, info, code = match.group(2), match.group(3), textwrap.dedent(match.group(4))
        if language in _RUNNERS:
            line = text.count("\n", 0, match.start()) + 1
            found.append(Example(language, line, code, runs="no-run" not in info.split()))
    return found


RUNNABLE = [e for e in examples() if e.runs]


def test_the_readme_has_runnable_examples_of_each_kind():
    kinds = {e.language for e in RUNNABLE}
    assert kinds == set(_RUNNERS) and len(RUNNABLE) >= 6, [e.name for e in RUNNABLE]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("readme"), analyzers="digits,simulate")
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.name for e in RUNNABLE])
def test_the_example_runs_as_written(stack, example, tmp_path):
    address = stack.url.removeprefix("http://")
    code = example.code.replace("localhost:8000", address).replace("127.0.0.1:8000", address)
    if example.language == "sh":
        # An HTTP error is a failed example too, though curl -s would exit 0 on it.
        code = 'curl() { command curl --fail-with-body "$@"; }\n' + code
    venv_bin = str(Path(sys.executable).parent)
    env = {**stack.env, "GPUQ_URL": stack.url, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(Path(venv_bin).parent), "TMPDIR": str(tmp_path)}
    done = subprocess.run([*_RUNNERS[example.language], code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=_TIMEOUT)
    assert done.returncode == 0, f"{example.name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
