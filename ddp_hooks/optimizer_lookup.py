"""Which optimizer steps a DDP model, for ``register(ddp)`` without ``optimizer=``.

The default hook is measured best told an Adam or AdamW (the Adam mode: the accuracy suite's LM
+0.8% / +0.9% at 2 / 4 ranks, where the default on raw gradients is +5.0% at 2;
``benchmarks/results/accuracy_window.md``, ``accuracy_packed.md``), and told a heavy-ball
momentum SGD it corrects the momentum (the LM +0.4% / +0.4% where raw gradients are +1.4% /
+2.3%; ``accuracy_default_sgd.md``). Users write ``register(ddp)``, so the hook looks for the optimizer itself, at its
first round (``ThreePCState.resolve``; or at ``state_dict``/``load_state_dict`` when one of them
comes first and finds it), when the training's optimizer exists whatever the order of the
script: torch keeps no registry of optimizers, so the lookup collects garbage (an optimizer of
an earlier run dropped in a reference cycle must not count) and reads the objects Python's
garbage collector tracks. Every rank runs the same lookup; the configuration check of the first
round compares the mechanisms, so ranks that chose differently raise ``ThreePCError`` together.
"""
from __future__ import annotations

import gc
import warnings
from typing import NamedTuple

import torch
from torch import nn

from . import adam, sgd
from .state import logger

AUTO = "auto"  # register(ddp, optimizer=AUTO): look for it; optimizer=None: compress raw gradients, look for nothing
# what the Adam mode's errors add when the lookup chose it
FOUND = (" (register(ddp) found this optimizer and runs its Adam mode; register(ddp, optimizer=None) leaves the "
         "optimizer and .grad as torch's)")
# what momentum correction's step errors add when register(ddp) chose it (found or passed without a name)
CORRECTING = (" (register(ddp) corrects the momentum of a momentum SGD; register(ddp, optimizer=None) leaves the "
              "optimizer and .grad as torch's)")


class Held(NamedTuple):
    """An optimizer that holds some of the model's trainable parameters (a framework's wrapper
    resolved to the torch optimizer inside), and why its wrapper refuses the Adam mode, if it does."""

    optimizer: torch.optim.Optimizer
    refused: str | None


class Found(NamedTuple):
    """The lookup's answer: the optimizer the default hook follows, if any (an Adam or AdamW for
    the Adam mode, a heavy-ball SGD for momentum correction), whether some optimizer holds the
    model's parameters (none yet: a later look may find one), and, when the first is None, the one
    SGD that holds them (Nesterov, no momentum, dampening: the plain default, which carries its
    error at that SGD's learning rate, ``registry.carried``)."""

    optimizer: torch.optim.Optimizer | None
    held: bool
    sgd: torch.optim.SGD | None = None


def holding(model: nn.Module) -> list[Held]:
    """The optimizers alive in this process that hold at least one of ``model``'s trainable
    parameters, after a garbage collection."""
    owned = {id(p) for p in model.parameters() if p.requires_grad}
    gc.collect()
    found: dict[int, Held] = {}
    for obj in gc.get_objects():
        if not issubclass(type(obj), torch.optim.Optimizer):  # type(): isinstance reads __class__, which may warn
            continue
        try:  # a wrapper shows its optimizer's param_groups
            if not any(id(p) in owned for group in obj.param_groups for p in group["params"]):
                continue
            try:
                inner, refused = adam.unwrapped(obj), None
            except ValueError as e:  # a wrapper that would undo the mode: its optimizer, and why
                inner, refused = adam.unwrapped(obj, strict=False), str(e)
        except Exception:  # noqa: BLE001, S112 - an object half built or torn down is no one's optimizer
            continue
        known = found.get(id(inner))
        found[id(inner)] = Held(inner, refused or (known.refused if known else None))
    return list(found.values())


def lookup(model: nn.Module, corrects: bool = True) -> Found:
    """``Found``: the Adam or AdamW that steps every trainable parameter of ``model`` and that the
    Adam mode takes, or else the heavy-ball SGD that momentum correction takes (``_heavy_ball``),
    if there is one. Warns, naming the fix, when an Adam or a heavy-ball SGD holds the model's
    parameters but the hook cannot follow it: the default then compresses raw gradients, which
    costs accuracy under either. ``corrects``: whether a heavy-ball SGD would be corrected
    (``register`` without options), else it is neither looked for nor warned about."""
    found = holding(model)
    adams = [h for h in found if isinstance(h.optimizer, (torch.optim.Adam, torch.optim.AdamW))]
    if not adams:
        heavy = _heavy_ball(found, model) if corrects else None
        return Found(heavy, bool(found), None if heavy is not None else _plain_sgd(found))
    kind = type(adams[0].optimizer).__name__
    try:
        _one_stepping_everything(found, adams[0], model)
        adam.adam_settings(adams[0].optimizer)
    except ValueError as e:
        warn(f"threepc: register(ddp) found an {kind} stepping the model, but its Adam mode cannot take it, so the "
             f"default hook compresses raw gradients (under Adam that costs accuracy: the LM +5.0% in the accuracy "
             f"suite): {e}. Pass optimizer=None to silence this")
        return Found(None, True)
    return Found(adams[0].optimizer, True)


def _one_stepping_everything(found: list[Held], held: Held, model: nn.Module) -> None:
    """A ValueError naming the fix unless ``held`` is the one optimizer stepping ``model``, every
    trainable parameter of it, and no wrapper or sharding refuses it (what both modes need)."""
    why = next(filter(None, (adam.sharded(h.optimizer) for h in found)), None)
    if why:
        raise ValueError(why)
    if len(found) > 1:
        raise ValueError(f"{len(found)} optimizers hold the model's parameters ("
                         f"{', '.join(type(h.optimizer).__name__ for h in found)}); pass the one that steps them all "
                         "as optimizer= (one optimizer, a param group per learning rate), or optimizer=None")
    if held.refused:
        raise ValueError(held.refused)
    adam.check_attachable(held.optimizer, model)


def _heavy_ball(found: list[Held], model: nn.Module) -> torch.optim.Optimizer | None:
    """The one optimizer holding ``model``'s parameters if it is an SGD that ``ef14_mc`` corrects
    (``sgd.corrects``) and no wrapper refuses; else None: the default hook then runs on raw
    gradients (``SGD_DEFAULT``). Warns, naming the fix, when a heavy-ball SGD (``sgd.heavy_ball``)
    holds the model's parameters but is not the one optimizer stepping all of them (another optimizer beside it, a ``ZeroRedundancyOptimizer`` around it, a wrapper
    that refuses): raw gradients cost accuracy under momentum SGD. Other SGDs get the plain
    default, measured best for them, silently."""
    heavy = [h for h in found if sgd.heavy_ball(h.optimizer)]
    if not heavy:
        return None
    try:
        _one_stepping_everything(found, heavy[0], model)  # with sgd.heavy_ball: sgd.corrects
    except ValueError as e:
        warn(f"threepc: register(ddp) found a momentum SGD stepping the model, but cannot correct its momentum, so "
             f"the default hook compresses raw gradients (under momentum SGD that costs accuracy: the LM +2.3% at 4 "
             f"ranks in the accuracy suite, +0.4% corrected): {e}. Pass optimizer=None to silence this")
        return None
    return heavy[0].optimizer


def _plain_sgd(found: list[Held]) -> torch.optim.SGD | None:
    """The one optimizer holding the model's parameters if it is an SGD (or a subclass) that no
    wrapper refuses, else None."""
    if len(found) != 1 or found[0].refused or not isinstance(found[0].optimizer, torch.optim.SGD):
        return None
    return found[0].optimizer


def warn(message: str) -> None:
    """A RuntimeWarning, or the ``threepc`` logger's warning where warnings are errors: the
    lookup runs in the hook before a collective, where one rank's exception would leave the
    others waiting."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    except Exception:  # noqa: BLE001 - see above
        logger.warning(message)
