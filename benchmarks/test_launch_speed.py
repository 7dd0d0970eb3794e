"""Start-up of localhost gloo ranks (``pytest benchmarks/test_launch_speed.py``): ``run_ranks`` of
two ranks that all-reduce one tensor, its forkserver (ranks forked from a server that imported
torch and threepc once, ``ddp_hooks.launch``) against torch's spawn (each rank a fresh interpreter
that imports torch), the start method it used before and falls back to. Each round is a whole call:
start, process group, one all_reduce, results back, exit.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from ddp_hooks import launch


def all_reduce_one(rank: int, workers: int) -> float:
    t = torch.ones(3)
    dist.all_reduce(t)
    return t.sum().item()


@pytest.mark.parametrize("implementation", ["threepc forkserver", "torch"])
def test_run_ranks_start(benchmark, record, monkeypatch, implementation):
    benchmark.group = "run_ranks of 2"
    if implementation == "torch":
        monkeypatch.setattr(launch, "start_method", lambda: "spawn")
    else:
        assert launch.start_method() == "forkserver", "no forkserver here"
    launch.run_ranks(all_reduce_one, 2)  # the forkserver's start is not timed
    result = benchmark.pedantic(launch.run_ranks, args=(all_reduce_one, 2), rounds=10, warmup_rounds=1)
    assert result == [6.0, 6.0]
    record(benchmark, benchmark.group, implementation)
