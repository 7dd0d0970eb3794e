"""``ef14_mc`` told its SGD: ``register(ddp, "ef14_mc", optimizer=sgd)``.

The hook corrects the momentum before compressing (``compressors.mechanisms.ef14_momentum``):
each rank keeps the momentum of its own gradient, error feedback runs on it, and the hook
leaves a^t - beta a^{t-1} in the gradients, so that torch's SGD, unchanged, steps by the
aggregate a^t of the compressed momenta. beta is read from the optimizer every round (a
scheduler may change it); nothing of the optimizer is replaced, so nothing follows the user's
``clip_grad_norm_``, which this hook's gradients do not survive.
"""
from __future__ import annotations

import functools

import torch

from compressors.mechanisms.ef14_momentum import checked_beta


def live_momentum(optimizer: torch.optim.SGD) -> float:
    """The momentum every param group of ``optimizer`` has now, or a ValueError naming the fix
    (the hook corrects whole DDP buckets with one beta; dampening changes the buffer's recursion)."""
    groups = optimizer.param_groups
    if any(float(g.get("dampening", 0.0)) != 0.0 for g in groups):
        raise ValueError("ef14_mc corrects the momentum of SGD without dampening; this SGD has dampening != 0. "
                         "Build it with dampening=0, or register another hook, e.g. the default: register(ddp)")
    betas = {float(g["momentum"]) for g in groups}
    if len(betas) != 1:
        raise ValueError(f"ef14_mc needs one momentum for every param group (the hook corrects whole DDP "
                         f"buckets); the groups have {sorted(betas)}. Give the groups one momentum, or register "
                         "another hook, e.g. the default: register(ddp)")
    return checked_beta(betas.pop())


def follows(optimizer: torch.optim.SGD) -> functools.partial:
    """What a round calls for beta: ``live_momentum`` of ``optimizer``, checked once now."""
    live_momentum(optimizer)
    return functools.partial(live_momentum, optimizer)
