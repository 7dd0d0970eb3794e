"""CO3 over a two-stage compressed allreduce (``core.two_stage``): CO3's quantizer and worker
error feedback, chunk payloads to the chunk owners, owners' error feedback on the way back."""
from __future__ import annotations

from ..core.two_stage import TwoStage
from .co3 import co3_quantizer
from ..operators.float_format import FloatFormat


class CO3TwoStage(TwoStage):
    """CO3 (``CO3``: v_i = grad_i + gamma e_i, Q = ``FloatQuantizer(fmt, scale=scale,
    coder=coder, rounding=rounding)``) whose payloads travel in two stages: worker i codes each
    of the n chunks of v_i for its owner; owner j codes u = mean_i Q(v_i[j]) + s_j once more,
    s_j <- u - Q(u); g is the owners' decoded chunks, the same on every rank.

    Against CO3's all_gather of whole payloads, each rank moves and decodes about two coded
    vectors per round whatever n is, and g carries a second quantization (whose error the owners
    feed back). Memory: e_i and s (the owner's error, zero outside its chunk)."""

    def __init__(self, fmt: str | FloatFormat = "fp8-152", gamma: float = 0.7, *, coder: str = "huffman",
                 scale: str = "gennorm", rounding: str = "nearest", seed: int = 0) -> None:
        super().__init__(co3_quantizer(fmt, gamma, coder=coder, scale=scale, rounding=rounding, seed=seed), gamma)

    def __repr__(self) -> str:
        return f"CO3TwoStage({self.compressor!r}, gamma={self.gamma})"
