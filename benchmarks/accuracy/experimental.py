"""EXPERIMENTAL correction candidates, measured by the suite; not part of the library.

``ef14_warmup``: EF14 whose Top-K ratio decays geometrically from ``start`` to ``ratio`` over
the first ``over`` iterations (the sparsity warm-up of Deep Gradient Compression, Lin et al.
2018), so early steps, where the gradient direction changes fastest, are nearly dense.
Subclasses ``compressors.TopK`` locally; EF14 passes the round to ``compress``, which is what
lets the ratio depend on the iteration (EF21's fused kernel does not, so this is EF14 only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn

import ddp_hooks
from compressors import EF14, TopK, kernels
from compressors.core.compressor import ROUND0
from compressors.core.rounds import Round


class WarmupTopK(TopK):
    """Top-K keeping ``start`` of the entries at iteration 0, ``ratio`` from iteration ``over``."""

    def __init__(self, ratio: float, start: float, over: int) -> None:
        super().__init__(ratio)
        self.start, self.over = start, over

    def ratio_at(self, t: int) -> float:
        if t >= self.over:
            return self.ratio
        return self.start * (self.ratio / self.start) ** (t / self.over)

    def k_for(self, numel: int, rnd: Round = ROUND0) -> int:
        return min(numel, max(1, math.ceil(self.ratio_at(rnd.t) * numel)))

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        return kernels.topk_abs(x, self.k_for(x.numel(), rnd))


class Candidate(Protocol):
    def check(self, **options: object) -> None: ...

    def register(self, ddp: nn.parallel.DistributedDataParallel, **options: object) -> ddp_hooks.ThreePCState: ...


@dataclass(frozen=True)
class EF14Warmup:
    def _mechanism(self, ratio: float = 0.01, start: float = 0.25, over: int = 100) -> EF14:
        return EF14(WarmupTopK(ratio, start, over))

    def check(self, **options: object) -> None:
        self._mechanism(**options)  # type: ignore[arg-type]

    def register(self, ddp: nn.parallel.DistributedDataParallel, **options: object) -> ddp_hooks.ThreePCState:
        state = ddp_hooks.ThreePCState(self._mechanism(**options), model=ddp)  # type: ignore[arg-type]
        ddp.register_comm_hook(state, ddp_hooks.threepc_hook)
        return state


EXPERIMENTAL: dict[str, Candidate] = {"ef14_warmup": EF14Warmup()}
