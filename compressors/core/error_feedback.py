"""Classic error feedback, the one implementation EF14, CO3 and SASG share."""
from __future__ import annotations

import torch
from torch import Tensor

from .compressor import Compressor
from .payload import Payload
from .rounds import Round


def compensated(compressor: Compressor, error: Tensor, x: Tensor, rnd: Round,
                decay: float = 1.0, out: Tensor | None = None) -> tuple[Payload, Tensor]:
    """v = x + decay * e;  send C(v);  e' = v - C(v)  (Seide et al. 2014; Stich et al. 2018, Alg. 1
    in gradient units; decay < 1 is CO3's memory decay gamma, Chen et al. 2022, Eq. (8)), with
    decay * e and the sum rounded to fp32 one after the other. Returns the payload and e':
    ``error`` is never written, so a compressor that raises (e.g. on non-finite input) leaves it
    as it was, and a caller may keep it as the memory to roll back to. v is a new tensor, or
    ``out`` (a flat fp32 buffer that is not ``error``) when given; e' is v itself for compressors
    whose residual works in place."""
    if out is None:
        v = x + decay * error if decay != 1.0 else x + error
    elif decay != 1.0:
        v = torch.mul(error, decay, out=out).add_(x)
    else:
        v = torch.add(x, error, out=out)
    return compressor.residual(v, rnd)
