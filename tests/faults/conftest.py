"""Each fault test gets a stack of its own: killing its parts cannot disturb another test."""

from __future__ import annotations

import pytest

from tests.stack import Stack


def pytest_collection_modifyitems(items):
    for item in items:
        if "/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def make_stack(tmp_path):
    stacks: list[Stack] = []

    def make(workers: int = 1, analyzers: str = "tests.fixtures.analyzers:Faulty", **env: str) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", analyzers=analyzers, **env).start(workers)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
