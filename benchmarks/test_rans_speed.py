"""Speed of CO3's rANS coder against its Huffman coder and a copy of the same codes, one core
(``pytest benchmarks/test_rans_speed.py``).

Input: 16K, 64K, 1M and 4M codes of GenNorm(beta = 1.2) values (a Laplace-like gradient with a spike
of 20% exact zeros) quantized by ``FloatQuantizer(fmt, scale="gennorm")``, fp8-152, fp8-143 and
fp4-121 (whose coders take pairs of codes per symbol). Per group, ``threepc rans`` and ``threepc
huffman`` code the quantizer's symbols with the tables the quantizer built from the same GenNorm
model (``FloatQuantizer.table``), and ``copy`` is ``dst.copy_(codes)`` of the uint8 codes into a
preallocated buffer. MB/s are megabytes of input codes (one byte per code) per second, for
encoding and for decoding alike.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compressors import FloatQuantizer

FORMATS = ("fp8-152", "fp8-143", "fp4-121")
SIZES = {"16K": 1 << 14, "64K": 1 << 16, "1M": 1 << 20, "4M": 1 << 22}  # 16K: two rANS states for every format


def gennorm_gradient(n: int, seed: int, beta: float = 1.2, zeros: float = 0.2) -> torch.Tensor:
    """|x|^beta ~ Gamma(1/beta), random signs, a fraction ``zeros`` set to exactly 0."""
    g = np.random.default_rng(seed)
    x = g.gamma(1 / beta, size=n) ** (1 / beta) * g.choice([-1.0, 1.0], n) * (g.random(n) >= zeros)
    return torch.from_numpy(x).float()


@pytest.fixture(scope="module", params=[(f, s) for f in FORMATS for s in SIZES], ids=lambda p: f"{p[0]}-{p[1]}")
def coded(request):
    """(label, codes, {coder: (table, symbols, stream)})."""
    fmt, size = request.param
    x = gennorm_gradient(SIZES[size], seed=0)
    out = {}
    for coder in ("rans", "huffman"):
        q = FloatQuantizer(fmt, coder=coder, scale="gennorm")
        payload = q.encode(x)[0]
        codes = q.codes(payload)
        out[coder] = (q.table(payload), q.symbols(codes), payload.parts["bytes"])
    return f"{fmt} {size}", codes, out


def rounds(n: int) -> int:
    return 200 if n <= 1 << 16 else 30


@pytest.mark.parametrize("implementation", ["threepc rans", "threepc huffman", "copy"])
@pytest.mark.parametrize("op", ["encode", "decode"])
def test_coder_speed(benchmark, record, coded, one_thread, op, implementation):
    label, codes, tables = coded
    benchmark.group = f"{op} {label}"
    if implementation == "copy":
        fn, args = torch.empty_like(codes).copy_, (codes,)
    else:
        table, symbols, stream = tables[implementation.split()[1]]
        fn, args = (table.encode, (symbols,)) if op == "encode" else (table.decode, (stream, symbols.numel()))
    benchmark.pedantic(fn, args=args, rounds=rounds(codes.numel()), warmup_rounds=2)
    record(benchmark, benchmark.group, implementation, processed=codes.numel())
