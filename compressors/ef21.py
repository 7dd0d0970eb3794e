"""EF21: error feedback with a Markov compressor (Richtárik, Sokolov, Fatkhullin 2021)."""
from __future__ import annotations

import math

from torch import Tensor

from . import kernels
from .mechanism import Mechanism
from .payload import Payload
from .topk import TopK


class EF21(Mechanism):
    """EF21 (Richtárik, Sokolov, Fatkhullin 2021, Alg. 1), worker i at round t:

        c_i^t     = C(grad_i(x^{t+1}) - g_i^t)
        g_i^{t+1} = g_i^t + c_i^t                     (the worker sends c_i^t)
        g^{t+1}   = g^t + (1/n) sum_i c_i^t           (so g = (1/n) sum_i g_i at every step)

    with C contractive with parameter alpha (Top-K: alpha = K/d). As a three-point compressor
    C_{h,y}(x) = h + C(x - h) (Richtárik et al. 2022, "3PC", Sec. 4) it has
    A = 1 - sqrt(1 - alpha) and B = (1 - alpha) / (1 - sqrt(1 - alpha)).
    Memory: g_i (fp32). With Top-K the step is one fused kernel (``ef21_topk_step``).
    """

    def init(self, grad: Tensor) -> None:
        self.memory = {"g_i": grad.detach().reshape(-1).float().clone()}

    def step(self, grad: Tensor) -> Payload:
        return self.compress_difference(grad)

    def compress_difference(self, target: Tensor) -> Payload:
        """c = C(target - g_i); g_i += c; return c's payload (one fused kernel for Top-K)."""
        g_i = self.memory["g_i"]
        if isinstance(self.compressor, TopK):
            values, indices = kernels.ef21_topk_step(target, g_i, self.compressor.k_for(g_i.numel()))
            return self.compressor.payload(values, indices, g_i.numel())
        payload = self.compressor.compress(target.reshape(-1).float() - g_i)
        g_i += self.compressor.decompress(payload)
        return payload

    def constants(self, numel: int) -> tuple[float, float]:
        """The 3PC constants (A, B) on R^numel."""
        alpha = self.compressor.alpha(numel)
        root = math.sqrt(1.0 - alpha)
        return 1.0 - root, (1.0 - alpha) / (1.0 - root) if alpha < 1.0 else 0.0
