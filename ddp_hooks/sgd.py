"""The SGD default told its optimizer: ``register(ddp, optimizer=sgd)`` with momentum.

The hook corrects the momentum before compressing (``compressors.mechanisms.ef14_momentum``):
each rank keeps the momentum of its own gradient, error feedback runs on it, and the hook
leaves a^t - beta a^{t-1} in the gradients, so that torch's SGD, unchanged, steps by the
aggregate a^t of the compressed momenta. beta is read from the optimizer every round (a
scheduler may change it); nothing of the optimizer is replaced.
"""
from __future__ import annotations

import functools
import warnings

import torch

from compressors.mechanisms.ef14_momentum import checked_beta


def has_momentum(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether ``optimizer`` is an SGD with momentum in some param group."""
    return isinstance(optimizer, torch.optim.SGD) and any(float(g["momentum"]) > 0.0 for g in optimizer.param_groups)


def live_momentum(optimizer: torch.optim.SGD) -> float:
    """The momentum every param group of ``optimizer`` has now, or a ValueError naming the fix
    (the hook corrects whole DDP buckets with one beta; dampening changes the buffer's recursion)."""
    groups = optimizer.param_groups
    if any(float(g.get("dampening", 0.0)) != 0.0 for g in groups):
        raise ValueError("register(ddp, optimizer=sgd) corrects the momentum of SGD without dampening; this SGD has "
                         "dampening != 0. Build it with dampening=0, or register a named hook, e.g. "
                         "register(ddp, 'ef14', compressor='topk8', ratio=0.05)")
    betas = {float(g["momentum"]) for g in groups}
    if len(betas) != 1:
        raise ValueError(f"register(ddp, optimizer=sgd) needs one momentum for every param group (the hook corrects "
                         f"whole DDP buckets); the groups have {sorted(betas)}. Give the groups one momentum, or "
                         "register a named hook, e.g. register(ddp, 'ef14', compressor='topk8', ratio=0.05)")
    return checked_beta(betas.pop())


def correctable(optimizer: torch.optim.SGD) -> bool:
    """Whether the default can correct ``optimizer``'s momentum; if not, a warning says why and
    the caller registers the plain SGD default (as before the correction existed)."""
    try:
        live_momentum(optimizer)
    except ValueError as e:
        warnings.warn(f"registering the SGD default without the momentum correction: {e}", RuntimeWarning,
                      stacklevel=3)
        return False
    return True


def follows(optimizer: torch.optim.SGD) -> functools.partial:
    """What a round calls for beta: ``live_momentum`` of ``optimizer``, checked once now."""
    live_momentum(optimizer)
    return functools.partial(live_momentum, optimizer)
