"""Fixtures shared by several test modules."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch


@pytest.fixture
def bound_calls() -> Callable[[torch.nn.Module], contextlib.AbstractContextManager[list[int]]]:
    """``with bound_calls(model) as calls:`` records the ``k`` of every ``model.bound`` call in the block."""

    @contextlib.contextmanager
    def record(model: torch.nn.Module) -> Iterator[list[int]]:
        calls: list[int] = []
        original = model.bound
        model.bound = lambda *args, **kw: calls.append(kw.get("k", 0)) or original(*args, **kw)
        try:
            yield calls
        finally:
            del model.bound

    return record
