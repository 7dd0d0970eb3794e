"""EF21-SGDM: EF21 applied to a momentum estimate (Fatkhullin, Tyurin, Richtárik 2023)."""
from __future__ import annotations

from torch import Tensor

from ..core.compressor import ROUND0, Compressor
from .ef21 import EF21
from ..core.mechanism import flat
from ..core.memory import EstimateAndMomentum
from ..core.payload import Payload
from ..core.rounds import Round


class EF21SGDM(EF21):
    """EF21-SGDM ("Momentum provably improves error feedback!", Fatkhullin, Tyurin, Richtárik
    2023, Alg. 1), worker i at round t with stochastic gradient grad_i(x^{t+1}; xi):

        v_i^{t+1} = (1 - eta) v_i^t + eta grad_i(x^{t+1}; xi)
        c_i^t     = C(v_i^{t+1} - g_i^t),   g_i^{t+1} = g_i^t + c_i^t   (the worker sends c_i^t)

    Plain EF21 compresses each noisy minibatch gradient, so g_i chases the noise; the momentum
    v_i averages it out first. The aggregate g is the mean of the g_i as in EF21, and g tracks
    an average of gradients rather than their sum, so use the optimiser without momentum.
    Memory: g_i and v_i (fp32). (A, B) are EF21's (the momentum is not part of the 3PC map).
    """

    def __init__(self, compressor: Compressor, eta: float = 0.1) -> None:
        if not 0.0 < eta <= 1.0:
            raise ValueError(f"EF21SGDM eta (momentum weight of the new gradient) must lie in (0, 1], got {eta}")
        super().__init__(compressor)
        self.eta = eta

    def __repr__(self) -> str:
        return f"EF21SGDM({self.compressor!r}, eta={self.eta})"

    memory_type = EstimateAndMomentum
    memory: EstimateAndMomentum
    written_in_place = None  # step writes g_i and v_i in place

    def setup(self, grad: Tensor) -> EstimateAndMomentum:
        return EstimateAndMomentum(grad, grad.clone())

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        momentum = self.memory.v_i
        momentum.mul_(1.0 - self.eta).add_(flat(grad), alpha=self.eta)
        return self.move(self.memory.g_i, None, momentum, rnd)
