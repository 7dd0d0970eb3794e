"""Which optimizer steps a DDP model, for ``register(ddp)`` without ``optimizer=``.

The default hook is measured best told an Adam or AdamW (the Adam mode: the accuracy suite's LM
+0.8% / +0.9% at 2 / 4 ranks, where the default on raw gradients is +5.0% at 2;
``benchmarks/results/accuracy_window.md``, ``accuracy_packed.md``); told an SGD it is the same
hook as untold. Users write ``register(ddp)``, so the registration looks for the optimizer
itself: torch keeps no registry of optimizers, so the lookup reads the objects Python's garbage
collector tracks, once at registration and, if it found none there (an optimizer built after
``register``), once more at the hook's first round or ``load_state_dict``, whichever comes first.
Every rank runs the same lookup; the configuration check of the first round compares the
mechanisms, so ranks that found different optimizers raise ``ThreePCError`` together.
"""
from __future__ import annotations

import gc
import warnings

import torch
from torch import nn

from . import adam

AUTO = "auto"  # register(ddp, optimizer=AUTO): look for it; optimizer=None: compress raw gradients, look for nothing


def holding(model: nn.Module) -> list[torch.optim.Optimizer]:
    """The optimizers alive in this process (a framework's wrapper resolved to the torch optimizer
    inside, ``adam.unwrapped``) that hold at least one of ``model``'s trainable parameters. An
    optimizer dropped in a reference cycle may linger: with more than one found, the cycles are
    collected and the objects read again."""
    owned = {id(p) for p in model.parameters() if p.requires_grad}

    def scan() -> list[torch.optim.Optimizer]:
        found: dict[int, torch.optim.Optimizer] = {}
        for obj in gc.get_objects():
            if issubclass(type(obj), torch.optim.Optimizer):  # type(): isinstance reads __class__, which may warn
                inner = adam.unwrapped(obj)
                if any(id(p) in owned for group in inner.param_groups for p in group["params"]):
                    found[id(inner)] = inner
        return list(found.values())

    found = scan()
    if len(found) > 1:
        del found  # no reference of ours held across the collection
        gc.collect()
        found = scan()
    return found


def adam_of(model: nn.Module) -> torch.optim.Optimizer | None:
    """The Adam or AdamW that steps every trainable parameter of ``model`` and that the Adam mode
    takes, else None (no optimizer yet, an SGD, another kind). Warns, naming the fix, when an Adam
    holds the model's parameters but the mode cannot take it: the default then compresses raw
    gradients, which costs accuracy under Adam."""
    found = holding(model)
    adams = [o for o in found if isinstance(o, (torch.optim.Adam, torch.optim.AdamW))]
    if not adams:
        return None
    kind = type(adams[0]).__name__
    try:
        if len(found) > 1:
            raise ValueError(f"{len(found)} optimizers hold the model's parameters "
                             f"({', '.join(type(o).__name__ for o in found)}); pass the one to follow as optimizer=")
        adam.adam_settings(adams[0])
        adam.check_attachable(adams[0], model)
    except ValueError as e:
        warnings.warn(f"threepc: register(ddp) found an {kind} stepping the model, but its Adam mode cannot take it, "
                      f"so the default hook compresses raw gradients (under Adam that costs accuracy: the LM +5.0% "
                      f"in the accuracy suite): {e}. Pass optimizer=None to silence this", RuntimeWarning,
                      stacklevel=3)
        return None
    return adams[0]
