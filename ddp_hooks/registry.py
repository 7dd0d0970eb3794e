"""Hooks by name, like torch's ``DDPCommHookType``, and one-line registration."""
from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist
from torch import nn

from compressors import EF21, EF21SGDM, Mechanism, TopK

from .hook import threepc_hook
from .state import ThreePCState


def _topk(ratio: float | None, k: int | None) -> TopK:
    return TopK(k=k) if k is not None else TopK(ratio=0.01 if ratio is None else ratio)


# name -> factory(ratio=..., k=..., mechanism options) of the per-worker mechanism
MECHANISMS: dict[str, Callable[..., Mechanism]] = {
    "ef21": lambda ratio=None, k=None: EF21(_topk(ratio, k)),
    # recommended for minibatch training: momentum inside the mechanism, SGD without momentum
    "ef21_sgdm": lambda ratio=None, k=None, eta=0.1: EF21SGDM(_topk(ratio, k), eta=eta),
}


def mechanism(name: str, **options: object) -> Mechanism:
    """The mechanism registered as ``name``, built with ``options`` (e.g. ``ratio=0.01``)."""
    try:
        factory = MECHANISMS[name]
    except KeyError:
        raise ValueError(f"unknown threepc hook {name!r}; known: {', '.join(sorted(MECHANISMS))}") from None
    return factory(**options)


def register(ddp: nn.parallel.DistributedDataParallel, name: str = "ef21", *, warmup_steps: int = 1,
             log_every: int = 0, process_group: dist.ProcessGroup | None = None,
             **options: object) -> ThreePCState:
    """Register the threepc hook ``name`` on ``ddp`` and return its state.

        >>> state = ddp_hooks.register(ddp_model, "ef21", ratio=0.01)
        >>> state.stats.summary()["fraction_of_dense"]
    """
    state = ThreePCState(mechanism(name, **options), process_group=process_group,
                         warmup_steps=warmup_steps, log_every=log_every, model=ddp)
    ddp.register_comm_hook(state, threepc_hook)
    return state
