"""What the example scripts share: a toy regression task, their report line and their exit."""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import ddp_hooks


def toy_task(samples: int = 1024, features: int = 32, hidden: int = 512) -> tuple[nn.Module, TensorDataset]:
    """A 280k-parameter MLP (two DDP buckets at ``bucket_cap_mb=1``) and a noisy linear target,
    identical on every rank (the samplers shard the data)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 1))
    x = torch.randn(samples, features)
    y = x @ torch.linspace(-1, 1, features).unsqueeze(1) + 0.1 * torch.randn(samples, 1)
    return model, TensorDataset(x, y)


def report(rank: int, state: ddp_hooks.ThreePCState, **extra: object) -> None:
    """One line per rank: the hook's byte counts (``fraction_of_dense``: bytes sent vs a dense
    allreduce) and ``extra``; the tests read it. One write, so that the ranks' lines do not
    interleave where stdout is unbuffered (print writes its arguments one by one)."""
    sys.stdout.write(f"threepc-stats {json.dumps({'rank': rank, **state.stats.summary(), **extra})}\n")
    sys.stdout.flush()


def finish() -> None:
    """Leave the process group and exit at once. With torch 2.13, gloo's threads now and then
    abort a rank during interpreter shutdown after all work is done (pytorch/pytorch#179291;
    ddp_hooks/launch.py measured 2 of 90 runs)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
