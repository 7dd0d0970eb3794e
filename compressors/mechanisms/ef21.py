"""EF21: error feedback with a Markov compressor (Richtárik, Sokolov, Fatkhullin 2021)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import Compressor
from ..core.payload import Payload
from ..core.rounds import Round
from ..core.three_point import ThreePoint
from ..operators.topk import TopK


def ef21_move(compressor: Compressor, h: Tensor, x: Tensor, rnd: Round, out: Tensor | None = None) -> Payload:
    """c = C(x - h); h' = h + c, written into ``out`` (a tensor shaped like h), else into h;
    return c's payload (one fused kernel for Top-K)."""
    if type(compressor) is TopK:
        target = h if out is None else out.copy_(h)
        values, indices = kernels.ef21_topk_step(x, target, compressor.k_for(h.numel()))
        return compressor.payload(values, indices, h.numel())
    difference = x - h
    payload = compressor.compress(difference, rnd)
    torch.add(h, compressor.decompress(payload, rnd).view_as(h), out=h if out is None else out)
    return Payload.of_temporary(payload, difference)  # the identity's payload (LAG's) is x - h itself


def ef21_constants(alpha: float) -> tuple[float, float]:
    """(A, B) = (1 - sqrt(1 - alpha), (1 - alpha) / (1 - sqrt(1 - alpha))) (3PC paper, Lemma 4.1)."""
    if alpha >= 1.0:
        return 1.0, 0.0
    root = math.sqrt(1.0 - alpha)
    return 1.0 - root, (1.0 - alpha) / (1.0 - root)


class EF21(ThreePoint):
    """EF21 (Richtárik, Sokolov, Fatkhullin 2021, Alg. 1), worker i at round t:

        c_i^t     = C(grad_i(x^{t+1}) - g_i^t)
        g_i^{t+1} = g_i^t + c_i^t                     (the worker sends c_i^t)
        g^{t+1}   = g^t + (1/n) sum_i c_i^t           (so g = (1/n) sum_i g_i at every step)

    with C contractive with parameter alpha (Top-K: alpha = K/d). As a 3PC, C_{h,y}(x) =
    h + C(x - h) with A = 1 - sqrt(1 - alpha) and B = (1 - alpha) / (1 - sqrt(1 - alpha)).
    Memory: g_i (fp32). With Top-K the step is one fused kernel (``ef21_topk_step``).
    """

    def move(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> Payload:
        return ef21_move(self.compressor, h, x, rnd)

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        return ef21_constants(self.compressor.alpha(numel))
