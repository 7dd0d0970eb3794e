"""Typed worker memories: what a mechanism keeps between rounds, one fp32 entry per coordinate.

Every field is a flat tensor of the worker's tensor length, so the DDP hook can split a memory
per parameter (checkpoints, re-bucketing) and join slices back (``tensors`` / ``of``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

from torch import Tensor

M = TypeVar("M", bound="Memory")


@dataclass
class Memory:
    """Base of every memory: no tensors (GD)."""

    def tensors(self) -> dict[str, Tensor]:
        """The fields by name, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def of(cls: type[M], tensors: dict[str, Tensor]) -> M:
        """The memory holding ``tensors`` (the names of ``tensors()``)."""
        return cls(**tensors)


@dataclass
class Estimate(Memory):
    """EF21's g_i: the worker's estimate of its gradient, which the aggregate averages."""

    g_i: Tensor


@dataclass
class EstimateAndGradient(Estimate):
    """g_i and y = grad f_i(x^t), the gradient the last round saw (LAG/CLAG triggers, 3PCv2/v5)."""

    y: Tensor


@dataclass
class EstimateAndMomentum(Estimate):
    """g_i and v_i, EF21-SGDM's momentum."""

    v_i: Tensor


@dataclass
class Error(Memory):
    """e_i: the part of past vectors not yet sent (classic error feedback)."""

    e_i: Tensor
