"""Low-precision float formats [sign, exponent, mantissa] with a bias, subnormals and no
inf/NaN codes (CO3, Chen et al. 2022, Sec. III-A), and their codes as uint8.

A code is sign << (e + m) | E << m | M and stands for (1 + M/2^m) 2^(E - bias) if E > 0, else
(M/2^m) 2^(1 - bias) (subnormal). The kernels (``compressors.kernels.float_encode/decode``)
map fp32/fp16/bf16 tensors to codes and back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import kernels

_NAME = re.compile(r"fp(\d)-1(\d)(\d)(?:-b(-?\d+))?$")


@dataclass(frozen=True)
class FloatFormat:
    """[1, exponent, mantissa] with ``bias`` (default 2^(exponent-1) - 1, IEEE's)."""

    exponent: int
    mantissa: int
    bias: int

    @classmethod
    def parse(cls, name: str) -> FloatFormat:
        """``"fp8-152"`` ([1,5,2], bias 15), ``"fp8-143-b10"`` ([1,4,3], bias 10), ``"fp4-121"``."""
        match = _NAME.match(name)
        if match is None:
            raise ValueError(f"float format {name!r} is not of the form fp<bits>-1<e><m>[-b<bias>], "
                             "e.g. fp8-152, fp8-143, fp8-143-b10, fp4-121")
        bits, e, m = (int(match.group(i)) for i in (1, 2, 3))
        if bits != 1 + e + m:
            raise ValueError(f"float format {name!r}: 1 + {e} + {m} bits is not {bits}")
        bias = int(match.group(4)) if match.group(4) is not None else (1 << (e - 1)) - 1
        return cls(e, m, bias)

    def __post_init__(self) -> None:
        if not (self.exponent >= 1 and self.mantissa >= 0 and self.exponent + self.mantissa <= 7):
            raise ValueError(f"float format [1, {self.exponent}, {self.mantissa}] needs exponent >= 1, "
                             "mantissa >= 0 and exponent + mantissa <= 7")

    def __str__(self) -> str:
        return f"fp{self.bits}-1{self.exponent}{self.mantissa}-b{self.bias}"

    @property
    def bits(self) -> int:
        """Bits per code."""
        return 1 + self.exponent + self.mantissa

    @property
    def codes(self) -> int:
        """Size of the code alphabet, 2^bits."""
        return 1 << self.bits

    @property
    def max_value(self) -> float:
        """The largest magnitude, (2 - 2^-m) 2^(2^e - 1 - bias)."""
        return float(np.ldexp(2.0 - 2.0 ** -self.mantissa, (1 << self.exponent) - 1 - self.bias))

    def values(self) -> np.ndarray:
        """The value of every code (float64, indexed by code)."""
        return kernels.float_decode(torch.arange(self.codes, dtype=torch.uint8), self.exponent, self.mantissa,
                                    self.bias).double().numpy()

    def encode(self, v: Tensor, scale: float = 1.0, seed: int | None = None, *, out: Tensor | None = None) -> Tensor:
        return kernels.float_encode(v, self.exponent, self.mantissa, self.bias, scale, seed, out=out)

    def decode(self, codes: Tensor, scale: float = 1.0, *, out: Tensor | None = None) -> Tensor:
        return kernels.float_decode(codes, self.exponent, self.mantissa, self.bias, scale, out=out)

    def accumulate(self, out: Tensor, codes: Tensor, scale: float = 1.0, alpha: float = 1.0) -> None:
        """out += alpha * decode(codes, scale), in one pass (``kernels.float_accumulate``)."""
        kernels.float_accumulate(out, codes, self.exponent, self.mantissa, self.bias, scale, alpha)
