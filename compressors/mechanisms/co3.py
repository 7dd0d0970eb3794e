"""CO3 (Chen, Hernandez, Huang, Rini 2022, arXiv 2204.08211): float conversion, lossless coding
and error feedback with memory decay."""
from __future__ import annotations

from .ef14 import EF14
from ..operators.float_format import FloatFormat
from ..operators.float_quantizer import FloatQuantizer


def co3_quantizer(fmt: str | FloatFormat, gamma: float, *, coder: str, scale: str, rounding: str,
                  seed: int) -> FloatQuantizer:
    """CO3's Q, after checking its memory decay gamma (the same for every CO3 variant)."""
    if not 0 < gamma <= 1:
        raise ValueError(f"CO3 gamma (memory decay) must lie in (0, 1], got {gamma}")
    return FloatQuantizer(fmt, scale=scale, coder=coder, rounding=rounding, seed=seed)


class CO3(EF14):
    """CO3, worker i with error memory e_i (e_i^0 = 0) and decay gamma in (0, 1]:

        v_i = grad f_i(x^{t+1}) + gamma e_i,   q_i = Q(v_i),   e_i <- v_i - q_i,
        g^{t+1} = (1/n) sum_i q_i              (the worker sends the code of q_i)

    with Q = ``FloatQuantizer(fmt, scale=scale, coder=coder, rounding=rounding)`` (the paper's
    Eq. (6)-(8); gamma = 1 is classical error feedback, the authors' default is 0.7): ``EF14``
    with e_i decayed. Not a 3PC. Memory: e_i.
    """

    def __init__(self, fmt: str | FloatFormat = "fp8-152", gamma: float = 0.7, *, coder: str = "huffman",
                 scale: str = "gennorm", rounding: str = "nearest", seed: int = 0) -> None:
        super().__init__(co3_quantizer(fmt, gamma, coder=coder, scale=scale, rounding=rounding, seed=seed))
        self.gamma = gamma

    def __repr__(self) -> str:
        return f"CO3({self.compressor!r}, gamma={self.gamma})"

    @property
    def decay(self) -> float:
        return self.gamma
