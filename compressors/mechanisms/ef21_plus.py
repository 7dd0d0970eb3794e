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
from ..core.memory import Estimate, reusable
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round


class EF21Plus(KeepsPeers):
    """EF21+, worker i: b = C(x), m = h + C(x - h);

        g_i^{t+1} = b if ||b - x|| <= ||m - x|| else m     (deterministic C only)

    and the worker sends a 1-byte flag and the chosen compressed vector (C(x) or C(x - h)).
    Replacing g_i by C(x) is not an increment the aggregate can decode alone, so the aggregate
    keeps every worker's g_r ("peer.r", n x d floats, on every DDP rank) and the dense round
    sends each worker's gradient (an all_gather, not an allreduce). (A, B) are EF21's:
    ||g_i^{t+1} - x|| <= ||m - x||. Memory: g_i (under ``step`` three more d-float buffers: the
    g_i of the round before last, which the next round writes, and the two residuals).
    """

    def __init__(self, compressor: Compressor) -> None:
        if not compressor.deterministic:
            raise ValueError(f"EF21+ compares C(x) with h + C(x - h), so C must be deterministic; {compressor!r} "
                             "is random: use TopK, or EF21 with this compressor")
        super().__init__(compressor)

    memory_type = Estimate
    memory: Estimate
    written_in_place: frozenset[str] | None = frozenset()
    _spare: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None)  # g_i before, 2 residuals

    def setup(self, grad: Tensor) -> Estimate:
        return Estimate(grad)

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return [PartSpec("flag", torch.uint8, 1), *self.compressor.spec(numel, rnd)]

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """The distances from their residuals, x - b = x - C(x) and x - m = (x - h) - C(x - h)
        (for a sparsifier the residual is written in place in O(K), and its terms are exactly
        x_i or x_i - h_i off the support, 0 on it), float64 sums (``kernels.abs_moments``);
        then the new g_i, C(x) or h plus C(x - h) (O(K) for a sparsifier after a copy of h),
        goes into the g_i of the round before last: the memory it replaces is never written.
        The residuals go into buffers of their own, reused every round."""
        x, h, c = flat(grad), self.memory.g_i, self.compressor
        spare, off_b, off_m = self._spare
        busy = (h, x)
        off_b = reusable(off_b, x.numel(), x.device, busy).copy_(x)
        off_m = torch.sub(x, h.view_as(x), out=reusable(off_m, x.numel(), x.device, (*busy, off_b)))
        fresh, off_b = c.residual(off_b, rnd)
        update, off_m = c.residual(off_m, rnd)
        reset = float(kernels.abs_moments(off_b)[2]) <= float(kernels.abs_moments(off_m)[2])
        new_h = reusable(spare, h.numel(), h.device, (*busy, off_b, off_m)).view_as(h)
        if reset:
            new_h.zero_()
        else:
            new_h.copy_(h)
        chosen = fresh if reset else update
        c.add_to(new_h, chosen, rnd)
        self._spare, self.memory = (h, off_b, off_m), Estimate(new_h)
        return Payload({"flag": torch.tensor([int(reset)], dtype=torch.uint8), **chosen.parts}, h.numel())

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        """Worker r's reset replaces peer_r (dense); its increment is added to peer_r and, times
        1/n, to g (O(K) each for a sparsifier, all increments in one ``accumulate``; under DDP
        the hook first copies the aggregate it keeps for a rollback, a dense pass per entry)."""
        n, c = len(payloads), self.compressor
        sent = [Payload({k: t for k, t in p.parts.items() if k != "flag"}, p.numel) for p in payloads]
        resets = [bool(p.parts["flag"][0]) for p in payloads]
        for r, (p, reset) in enumerate(zip(sent, resets)):
            if reset:
                self.replace_peer(server, r, c.decompress(p, rnd.of(r)), n)
            else:  # an increment: the new g_r is peer_r + C(x - h)
                c.add_to(server[f"peer.{r}"], p, rnd.of(r))
        c.accumulate(server["g"], [Payload({}, p.numel) if reset else p for p, reset in zip(sent, resets)],
                     1.0 / n, rnd)

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        return ef21_constants(self.compressor.alpha(numel))
