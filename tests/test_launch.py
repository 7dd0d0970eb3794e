"""``ddp_hooks.launch.run_ranks``: ranks forked from a forkserver that imported torch once see the
caller's environment and stdout as they are at each call (already while ``fn``'s module is
imported), draw their own random numbers, and a changed variable that is read at import
(``THREEPC_BACKEND``, torch's) makes the ranks spawned instead."""
import multiprocessing
import os
import pickle
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


def test_fns_module_is_imported_under_the_callers_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    (tmp_path / "launch_probe_module.py").write_text(
        "import os\nAT_IMPORT = os.environ.get('LAUNCH_TEST_IMPORT')\n\n"
        "def at_import(rank, workers):\n    return AT_IMPORT\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import launch_probe_module

    launch.start_method()  # the forkserver runs before the variable is set
    monkeypatch.setenv("LAUNCH_TEST_IMPORT", "set")
    assert launch.run_ranks(launch_probe_module.at_import, 2) == ["set", "set"]


def _draw(rank: int, workers: int) -> float:
    import torch

    return torch.rand(1).item()


def test_every_rank_of_every_call_draws_its_own_random_numbers() -> None:
    draws = launch.run_ranks(_draw, 2) + launch.run_ranks(_draw, 2)
    assert len(set(draws)) == 4, draws


def test_a_caller_context_travels_only_with_a_rank_start() -> None:
    with pytest.raises(TypeError, match="only with a process that run_ranks starts"):
        pickle.dumps(launch.CallerContext())


@pytest.mark.parametrize("name", ["THREEPC_BACKEND", "TORCH_DISTRIBUTED_DEBUG"])
def test_a_changed_import_time_variable_spawns_the_ranks(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    launch.start_method()
    monkeypatch.setenv(name, os.environ.get(name, "") + "x")
    assert launch.start_method() == "spawn"
    monkeypatch.undo()
    assert launch.start_method() == "forkserver"
