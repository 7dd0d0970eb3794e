"""3PCv1 (3PC paper, Sec. 4.4): compress the gradient's change, anchored at the exact y."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..core.compressor import ROUND0
from ..core.mechanism import mean_of
from ..core.payload import ORACLE, PartSpec, Payload
from ..core.rounds import Round
from ..core.three_point import ThreePoint


class ThreePCv1(ThreePoint):
    """3PCv1: C_{h,y}(x) = y + C(x - y); A = 1, B = 1 - alpha.

    The new g_i is anchored at y = grad f_i(x^t), which the server never received, so the
    aggregate g = (1/n) sum_i (y_i + C(x_i - y_i)) needs the exact previous gradients: the
    payload carries y as an ``oracle.y`` part (free side information). Simulation only; the
    DDP hook refuses it. Memory: g_i and y.
    """

    uses_y = True

    def move(self, h: Tensor, y: Tensor | None, x: Tensor, rnd: Round) -> Payload:
        sent = self.compressor.compress(x - y, rnd)
        h.copy_(y + self.compressor.decompress(sent, rnd))
        return Payload({**sent.parts, ORACLE + "y": y.clone()}, h.numel())

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        raise NotImplementedError("3PCv1 needs each worker's exact previous gradient at the aggregate, which DDP "
                                  "never sends: it exists in the simulation harness only; use EF21 or 3PCv2")

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        def anchored(p: Payload, r: int) -> Tensor:
            sent = Payload({k: t for k, t in p.parts.items() if not k.startswith(ORACLE)}, p.numel)
            return p.parts[ORACLE + "y"] + self.compressor.decompress(sent, rnd.of(r))

        server["g"].copy_(mean_of(payloads, anchored))

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        return 1.0, 1.0 - self.compressor.alpha(numel)
