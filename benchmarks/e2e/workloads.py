"""Workloads: the accuracy suite's ``stdlib_lm`` and an MLP with a gradient of tens of MB."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..accuracy.tasks import QUICK as ACCURACY_QUICK, TASKS, Digits, Task


@dataclass(frozen=True)
class DigitsMLP(Digits):
    """The suite's digits task (data, shifts, test accuracy) with a wide MLP, 64 -> h -> h -> 10:
    4.35 M parameters (17.4 MB of fp32 gradient) at h = 2048, where communication dominates."""

    name: ClassVar[str] = "digits_mlp"
    steps: int = 120
    eval_every: int = 10
    bucket_cap_mb: float = 25.0  # DDP's default
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.02), ("adamw", 5e-4))
    hidden: int = 2048

    def model(self) -> nn.Module:
        h = self.hidden
        return nn.Sequential(nn.Flatten(), nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))


WORKLOADS: dict[str, Task] = {"stdlib_lm": dataclasses.replace(TASKS["stdlib_lm"], steps=150, eval_every=15),
                              "digits_mlp": DigitsMLP()}
QUICK: dict[str, dict[str, object]] = {
    "stdlib_lm": {**ACCURACY_QUICK["stdlib_lm"], "steps": 20, "eval_every": 5},
    "digits_mlp": {"steps": 12, "eval_every": 4},
}
