"""Hooks by name, like torch's ``DDPCommHookType``, and one-line registration."""
from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist
from torch import nn

from compressors import (CLAG, CO3, EF14, EF21, EF21SGDM, GD, LAG, LAGWK, MARINA, EF21Plus, Mechanism, PermK, RandK,
                         SASG, ThreePCv2, ThreePCv4, ThreePCv5, TopK)

from .hook import threepc_hook
from .state import ThreePCState


def _topk(ratio: float | None, k: int | None) -> TopK:
    return TopK(k=k) if k is not None else TopK(ratio=0.01 if ratio is None else ratio)


def _marina(ratio: float | None = None, k: int | None = None, p: float = 0.1, q: str = "randk",
            shared: bool = False, seed: int = 0) -> MARINA:
    if q == "permk":
        return MARINA(PermK(seed=seed), p, seed=seed)
    if q != "randk":
        raise ValueError(f"MARINA's q must be 'randk' or 'permk', got {q!r}")
    rand = RandK(k=k, shared=shared, seed=seed) if k is not None else RandK(0.01 if ratio is None else ratio,
                                                                            shared=shared, seed=seed)
    return MARINA(rand, p, seed=seed)


# name -> factory(options) of the per-worker mechanism; ratio=/k= size the Top-K (default 1%).
# LAG, LAG-WK and CLAG skip rounds (the hook's lazy protocol); 3PCv1 is simulation only.
MECHANISMS: dict[str, Callable[..., Mechanism]] = {
    "gd": GD,  # dense: one fp32 allreduce per bucket, like DDP's default
    "ef14": lambda ratio=None, k=None: EF14(_topk(ratio, k)),
    "ef21": lambda ratio=None, k=None: EF21(_topk(ratio, k)),
    "ef21plus": lambda ratio=None, k=None: EF21Plus(_topk(ratio, k)),
    # recommended for minibatch training: momentum inside the mechanism, SGD without momentum
    "ef21_sgdm": lambda ratio=None, k=None, eta=0.1: EF21SGDM(_topk(ratio, k), eta=eta),
    "3pcv2": lambda ratio=None, k=None, q_ratio=None, seed=0: ThreePCv2(
        _topk(ratio, k), RandK(q_ratio or ratio or 0.01, seed=seed)),
    "3pcv4": lambda ratio=None, k=None, ratio2=None: ThreePCv4(_topk(ratio, k), TopK(ratio2 or ratio or 0.01)),
    "3pcv5": lambda ratio=None, k=None, p=0.1, seed=0: ThreePCv5(_topk(ratio, k), p, seed=seed),
    "marina": _marina,
    "co3": lambda fmt="fp8-152", gamma=0.7, coder="huffman", scale="gennorm", rounding="nearest", seed=0: CO3(
        fmt, gamma, coder=coder, scale=scale, rounding=rounding, seed=seed),
    "lag": lambda zeta=1.0: LAG(zeta),
    "lagwk": lambda xi=1.0, window=10: LAGWK(xi, window),
    "clag": lambda ratio=None, k=None, zeta=1.0: CLAG(_topk(ratio, k), zeta),
    # exact=True needs ddp_hooks.StaleGradients in the training step
    "sasg": lambda ratio=None, k=None, window=10, c=None, exact=False: SASG(_topk(ratio, k), window=window, c=c,
                                                                         exact=exact),
}


def mechanism(name: str, **options: object) -> Mechanism:
    """The mechanism registered as ``name``, built with ``options`` (e.g. ``ratio=0.01``)."""
    try:
        factory = MECHANISMS[name]
    except KeyError:
        raise ValueError(f"unknown threepc hook {name!r}; known: {', '.join(sorted(MECHANISMS))}") from None
    try:
        return factory(**options)
    except TypeError as e:
        raise ValueError(f"threepc hook {name!r} does not take these options {sorted(options)}: {e}") from None


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
