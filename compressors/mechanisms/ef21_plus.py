"""EF21+ (Richtárik, Sokolov, Fatkhullin 2021, Sec. 5 / Alg. 4): keep the better of C(x) and
h + C(x - h)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0, Compressor
from .ef21 import ef21_constants
from ..core.mechanism import KeepsPeers, flat
from ..core.memory import Estimate
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round


class EF21Plus(KeepsPeers):
    """EF21+, worker i: b = C(x), m = h + C(x - h);

        g_i^{t+1} = b if ||b - x|| <= ||m - x|| else m     (deterministic C only)

    and the worker sends a 1-byte flag and the chosen compressed vector (C(x) or C(x - h)).
    Replacing g_i by C(x) is not an increment the aggregate can decode alone, so the aggregate
    keeps every worker's g_r ("peer.r", n x d floats, on every DDP rank) and the dense round
    sends each worker's gradient (an all_gather, not an allreduce). (A, B) are EF21's:
    ||g_i^{t+1} - x|| <= ||m - x||. Memory: g_i.
    """

    def __init__(self, compressor: Compressor) -> None:
        if not compressor.deterministic:
            raise ValueError(f"EF21+ compares C(x) with h + C(x - h), so C must be deterministic; {compressor!r} "
                             "is random: use TopK, or EF21 with this compressor")
        super().__init__(compressor)

    memory_type = Estimate
    memory: Estimate

    def setup(self, grad: Tensor) -> Estimate:
        return Estimate(grad)

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return [PartSpec("flag", torch.uint8, 1), *self.compressor.spec(numel, rnd)]

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """The distances from their residuals, x - b = x - C(x) and x - m = (x - h) - C(x - h)
        (for a sparsifier the residual is written in place in O(K), and its terms are exactly
        x_i or x_i - h_i off the support, 0 on it), float64 sums (``kernels.abs_moments``);
        then g_i is written in place: C(x), or h plus C(x - h) (O(K) for a sparsifier)."""
        x, h, c = flat(grad), self.memory.g_i, self.compressor
        fresh, off_b = c.residual(x.clone(), rnd)
        update, off_m = c.residual(x - h, rnd)
        reset = float(kernels.abs_moments(off_b)[2]) <= float(kernels.abs_moments(off_m)[2])
        chosen = fresh if reset else update
        if reset:
            h.zero_()
        c.add_to(h, chosen, rnd)
        return Payload({"flag": torch.tensor([int(reset)], dtype=torch.uint8), **chosen.parts}, h.numel())

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        n = len(payloads)
        for r, p in enumerate(payloads):
            decoded = self.compressor.decompress(Payload({k: t for k, t in p.parts.items() if k != "flag"}, p.numel),
                                                 rnd.of(r))
            if int(p.parts["flag"][0]):
                self.replace_peer(server, r, decoded, n)
            else:  # an increment: the new g_r is peer_r + C(x - h)
                server["g"].add_(decoded, alpha=1.0 / n)
                server[f"peer.{r}"].add_(decoded)

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        return ef21_constants(self.compressor.alpha(numel))
