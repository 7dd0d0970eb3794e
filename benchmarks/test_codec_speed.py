"""Speed of CO3's codecs (``make bench``): float conversion against a copy of the same fp32
buffer, Huffman coding in MB/s of 1-byte codes on one core.

Groups: ``float_encode``/``float_decode``/``float_accumulate`` of 6.5M and 64M fp32 values (fp8-152, round to
nearest; the active backend, all cores) next to ``copy`` (``dst.copy_(src)`` of the fp32
buffer into a preallocated ``dst``) and ``clone`` (the same copy into a fresh buffer), threepc both
allocating its output (``threepc``, to compare with ``clone``) and writing into a preallocated
one (``threepc out=``, to compare with ``copy``): above glibc's 32 MB mmap threshold every fresh
buffer is page-faulted in, which costs more than the conversion; ``huffman_encode``/``huffman_decode`` of 6.5M fp8 codes of Gaussian values with
their histogram's code (one thread: the coder is sequential).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compressors import FloatFormat
from compressors.codecs.huffman import HuffmanTable

FMT = FloatFormat.parse("fp8-152")
SIZES = {"6.5M": 6_500_000, "64M": 64_000_000}


@pytest.fixture(scope="module", params=list(SIZES))
def values(request):
    return request.param, torch.randn(SIZES[request.param], generator=torch.Generator().manual_seed(0))


def rounds(n: int) -> int:
    """Many rounds: this shared VM's medians move by 2x between short runs."""
    return 10 if n >= 50_000_000 else 50


@pytest.mark.parametrize("op", ["float_encode", "float_decode"])
@pytest.mark.parametrize("implementation", ["threepc", "threepc out=", "copy", "clone"])
def test_float_conversion(benchmark, record, values, op, implementation):
    size, x = values
    benchmark.group = f"{op} {size}"
    kwargs = {}
    if implementation == "copy":
        fn, args = torch.empty_like(x).copy_, (x,)
    elif implementation == "clone":  # a copy into a fresh buffer: the yardstick of the allocating calls
        fn, args = x.clone, ()
    elif op == "float_encode":
        fn, args = FMT.encode, (x, 1e-3)
        kwargs = {"out": torch.empty(x.numel(), dtype=torch.uint8)}
    else:
        fn, args = FMT.decode, (FMT.encode(x, 1e-3), 1e-3)
        kwargs = {"out": torch.empty_like(x)}
    if implementation != "threepc out=":
        kwargs = {}
    benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=rounds(x.numel()), warmup_rounds=1)
    record(benchmark, benchmark.group, implementation)


@pytest.fixture(scope="module")
def coded():
    codes = FMT.encode(torch.randn(6_500_000, generator=torch.Generator().manual_seed(1)), 1e-3)
    table = HuffmanTable.from_weights(np.bincount(codes.numpy(), minlength=256) + 1.0)
    return codes, table, table.encode(codes)


def test_huffman_encode(benchmark, record, coded, one_thread):
    codes, table, _ = coded
    benchmark.group = "huffman_encode 6.5M codes"
    benchmark.pedantic(table.encode, args=(codes,), rounds=30, warmup_rounds=1)
    record(benchmark, benchmark.group, "threepc", processed=codes.numel())


def test_huffman_decode(benchmark, record, coded, one_thread):
    codes, table, stream = coded
    benchmark.group = "huffman_decode 6.5M codes"
    benchmark.pedantic(table.decode, args=(stream, codes.numel()), rounds=30, warmup_rounds=1)
    record(benchmark, benchmark.group, "threepc", processed=codes.numel())


@pytest.mark.parametrize("implementation", ["threepc", "torch", "torch out=", "add_"])
def test_float_accumulate(benchmark, record, values, implementation):
    """out += alpha * decoded codes (CO3's residual, alpha = -1, and its aggregate) in one pass,
    against decoding into a fresh buffer and adding (``torch``, what CO3 did), or into a
    preallocated one (``torch out=``); ``add_`` of an fp32 buffer of the same size is the
    yardstick of one pass."""
    size, x = values
    benchmark.group = f"float_accumulate {size}"
    codes, out = FMT.encode(x, 1e-3), torch.zeros_like(x)
    scratch = torch.empty_like(x) if implementation == "torch out=" else None
    fn = {"threepc": lambda: FMT.accumulate(out, codes, 1e-3, -1.0),
          "torch": lambda: out.sub_(FMT.decode(codes, 1e-3)),
          "torch out=": lambda: out.sub_(FMT.decode(codes, 1e-3, out=scratch)),
          "add_": lambda: out.sub_(x)}[implementation]
    benchmark.pedantic(fn, rounds=rounds(x.numel()), warmup_rounds=1)
    record(benchmark, benchmark.group, implementation)
