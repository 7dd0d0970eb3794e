"""Shared test setup (tests import the library only, never benchmarks/)."""
from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global torch RNG state (tests must not be flaky)."""
    torch.manual_seed(0)


def _one_rank_world(store: Path) -> Iterator[None]:
    """A gloo world of this process alone, released on this thread.

    A ``.then()`` callback runs on a gloo worker thread and drops its closure there after the
    waiting thread has moved on; if that closure (a hook's state, a DDP) held the last reference
    to the process group, ``~ProcessGroupGloo`` would join the worker from itself and abort the
    whole pytest process ("terminate ... Resource deadlock avoided", seen once in CI). So the
    group is held here until every worker is idle and is freed by this thread.
    """
    dist.init_process_group("gloo", store=dist.FileStore(str(store), 1), rank=0, world_size=1)
    held = dist.group.WORLD
    yield
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    time.sleep(0.05)  # the GIL to any worker still dropping a callback's closure
    gc.collect()
    del held


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[None]:
    """A one-rank gloo world for one test."""
    yield from _one_rank_world(tmp_path / "store")


@pytest.fixture(scope="module")
def one_rank_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-rank gloo world shared by a module's tests."""
    yield from _one_rank_world(tmp_path_factory.mktemp("store") / "store")
