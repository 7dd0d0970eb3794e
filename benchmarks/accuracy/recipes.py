"""Training recipes as users write them: optimizer, schedule, weight decay, clipping.

Clipping is ``torch.nn.utils.clip_grad_norm_`` after ``backward()``, i.e. on the gradient the
communication hook already aggregated (what every rank's optimizer sees).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str  # "sgd" or "adamw": picks the task's base learning rate
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    warmup: float = 0.0  # fraction of the steps with a linear warm-up of the learning rate
    cosine: bool = False  # cosine decay to 0 after the warm-up (else constant)
    clip: float | None = None  # max gradient norm
    lr_scale: float = 1.0  # times the task's base learning rate

    def optimizer(self, params: list[nn.Parameter], lr: float, steps: int
                  ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        lr *= self.lr_scale
        if self.family == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=self.momentum,
                                                         nesterov=self.nesterov, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        warm = max(1, round(self.warmup * steps)) if self.warmup else 0

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if not self.cosine:
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def clip_gradients(self, params: list[nn.Parameter]) -> None:
        if self.clip is not None:
            nn.utils.clip_grad_norm_(params, self.clip)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("sgdm", "sgd", momentum=0.9, weight_decay=5e-4),
    Recipe("nesterov", "sgd", momentum=0.9, nesterov=True, weight_decay=5e-4),
    # momentum SGD as larger trainings run it: warm-up, cosine decay, clip_grad_norm_
    Recipe("sgdm_cosine", "sgd", momentum=0.9, weight_decay=5e-4, warmup=0.05, cosine=True, clip=1.0),
    Recipe("sgdm_cosine_noclip", "sgd", momentum=0.9, weight_decay=5e-4, warmup=0.05, cosine=True),
    Recipe("nesterov_cosine", "sgd", momentum=0.9, nesterov=True, weight_decay=5e-4, warmup=0.05, cosine=True,
           clip=1.0),
    Recipe("adamw", "adamw", weight_decay=0.1, warmup=0.05, cosine=True, clip=1.0),
    # plain SGD at lr / (1 - 0.9): the pairing ddp_hooks documents for ef21_sgdm (eta = 0.1 in the
    # mechanism is then heavy-ball 0.9 when nothing is compressed); a reference, not a user recipe
    Recipe("sgd_lr10", "sgd", weight_decay=5e-4, lr_scale=10.0),
    Recipe("adamw_noclip", "adamw", weight_decay=0.1, warmup=0.05, cosine=True),
)}


def recipe_named(name: str) -> Recipe:
    """``RECIPES[name]``, or for ``"NAME*S"`` that recipe at S times its learning rate (e.g.
    ``sgdm*0.5``: how far the rate must come down for a hook to hold a task); a ValueError
    naming the recipes otherwise."""
    base, _, scale = name.partition("*")
    if base not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: one of {', '.join(RECIPES)}, optionally NAME*S for S times "
                         "its learning rate")
    if not scale:
        return RECIPES[base]
    try:
        factor = float(scale)
    except ValueError:
        factor = 0.0
    if not (factor > 0.0 and math.isfinite(factor)):
        raise ValueError(f"recipe {name!r}: S in NAME*S must be a positive number (the learning rate's factor)")
    return dataclasses.replace(RECIPES[base], name=name, lr_scale=RECIPES[base].lr_scale * factor)
