"""``ddp_hooks.launch.run_ranks``: ranks forked from a forkserver that imported torch once see the
caller's environment and stdout as they are at each call, and a changed ``THREEPC_`` variable (read when threepc
is imported) makes the ranks spawned instead."""
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from ddp_hooks import launch

pytestmark = pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(),
                                reason="no forkserver on this platform")


def _seen(rank: int, workers: int, name: str) -> str | None:
    return os.environ.get(name)


def _prints(rank: int, workers: int, text: str) -> None:
    if rank == 0:  # one writer: two would interleave their writes
        print(text, flush=True)


def test_the_ranks_print_where_the_caller_prints_at_each_call(tmp_path: Path) -> None:
    """The forkserver started at an earlier test (its stdout: pytest's capture) or at the first
    call here (its stdout: the first file); either way the second call's ranks print to the second."""
    saved = os.dup(1)
    try:
        for name in ("first", "second"):
            with open(tmp_path / name, "w") as f:
                sys.stdout.flush()
                os.dup2(f.fileno(), 1)
                launch.run_ranks(_prints, 2, name)
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    for name in ("first", "second"):
        assert (tmp_path / name).read_text() == f"{name}\n"


def test_the_ranks_see_the_environment_of_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("one", "two"):  # the forkserver started at the first call (or earlier) with neither
        monkeypatch.setenv("LAUNCH_TEST_VALUE", value)
        assert launch.start_method() == "forkserver"
        assert launch.run_ranks(_seen, 2, "LAUNCH_TEST_VALUE") == [value, value]
    monkeypatch.delenv("LAUNCH_TEST_VALUE")
    assert launch.run_ranks(_seen, 2, "LAUNCH_TEST_VALUE") == [None, None]


def test_a_changed_threepc_variable_spawns_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREEPC_BACKEND", os.environ.get("THREEPC_BACKEND", "") + "x")
    assert launch.start_method() == "spawn"
    monkeypatch.undo()
    assert launch.start_method() == "forkserver"
