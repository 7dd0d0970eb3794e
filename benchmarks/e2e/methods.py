"""Methods: DDP's fp32 allreduce, torch's fp16 and PowerSGD hooks, ``default``
(``register(ddp)``: the default hook, which finds the run's optimizer: EF14 with momentum correction under
momentum SGD, EF14 over signs in the optimizer-aware mode under AdamW) and any threepc hook spec
(``NAME[+opt]:KEY=VALUE,...``, as in the accuracy suite)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

import ddp_hooks

from ..accuracy.recipes import RECIPES
from ..accuracy.runner import BASELINE, POWERSGD, aware, check_hook, parse_hook, powersgd

DEFAULT = "default"
POWERSGD_START = 10
DENSE = {BASELINE: 1.0, "fp16": 0.5}  # dense hooks: bytes per fp32 gradient byte
METHODS = [BASELINE, "fp16", POWERSGD, DEFAULT, "ef14", "ef21", "co3:fmt=fp4-121", "clag"]
QUICK_METHODS = [BASELINE, "fp16", DEFAULT]
# (payload bytes sent, ring-model link bytes sent) by this rank so far; None: not modelled
Counter = Callable[[], tuple[int, int]] | None


def check(spec: str) -> None:
    """ValueError for an unknown method or options (before spawning ranks)."""
    if spec != POWERSGD:
        check_hook(spec)


def label(spec: str, recipe: str = "sgdm") -> str:
    """The method's name in tables and plots; ``default`` says what it resolved to under the recipe."""
    if spec != DEFAULT:
        return spec
    chosen = RECIPES[recipe]
    if chosen.family == "adamw":
        return "default (ef14 signs, Adam mode)"
    corrected = chosen.momentum > 0.0 and not chosen.nesterov  # ddp_hooks.sgd.corrects
    return "default (ef14_mc topk8 5%)" if corrected else "default (ef14 topk8 5%)"


def register(ddp: nn.parallel.DistributedDataParallel, spec: str, workers: int, steps: list[int],
             optimizer: torch.optim.Optimizer) -> Counter:
    """Register ``spec`` on ``ddp`` (``optimizer``: the run's, for ``default`` and ``NAME+opt``);
    returns this rank's byte counter. ``steps`` holds the number
    of synchronised steps so far (dense hooks are counted from the parameter sizes: ring
    allreduce sends 2 (n - 1) / n of the buffer per rank)."""
    name, options = parse_hook(spec)
    if name == POWERSGD:  # rank 2 after 10 dense steps unless told (torch's default start, 1000, is past these runs' end)
        powersgd(ddp, **{"rank": 2, "start": POWERSGD_START, **options})
        return None  # P and Q sizes are not modelled: the lo counter is the measurement
    if name in DENSE:
        if name == "fp16":
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        dense = sum(p.numel() * p.element_size() for p in ddp.parameters()) * DENSE[name]
        return lambda: (round(dense * steps[0]), round(dense * steps[0] * 2 * (workers - 1) / workers))
    name, told = aware(name)
    state = ddp_hooks.register(ddp, **options) if name == DEFAULT else \
        ddp_hooks.register(ddp, name, optimizer=optimizer if told else None, **options)
    return lambda: (state.stats.total_sent, state.stats.link_sent)
