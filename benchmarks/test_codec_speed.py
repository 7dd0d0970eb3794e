"""Speed of CO3's codecs (``make bench``): float conversion against a copy of the same fp32
buffer, Huffman coding in MB/s of 1-byte codes on one core.

Groups: ``float_encode``/``float_decode`` of 6.5M and 64M fp32 values (fp8-152, round to
nearest; the active backend, all cores) next to ``copy`` (``dst.copy_(src)`` of the fp32
buffer); ``huffman_encode``/``huffman_decode`` of 6.5M fp8 codes of Gaussian values with
their histogram's code (one thread: the coder is sequential).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compressors import FloatFormat
from compressors.huffman import HuffmanTable

FMT = FloatFormat.parse("fp8-152")
SIZES = {"6.5M": 6_500_000, "64M": 64_000_000}


@pytest.fixture(scope="module", params=list(SIZES))
def values(request):
    return request.param, torch.randn(SIZES[request.param], generator=torch.Generator().manual_seed(0))


def rounds(n: int) -> int:
    return 5 if n >= 50_000_000 else 20


@pytest.mark.parametrize("op", ["float_encode", "float_decode"])
@pytest.mark.parametrize("implementation", ["threepc", "copy"])
def test_float_conversion(benchmark, record, values, op, implementation):
    size, x = values
    benchmark.group = f"{op} {size}"
    if implementation == "copy":
        fn, args = torch.empty_like(x).copy_, (x,)
    elif op == "float_encode":
        fn, args = FMT.encode, (x, 1e-3)
    else:
        fn, args = FMT.decode, (FMT.encode(x, 1e-3), 1e-3)
    benchmark.pedantic(fn, args=args, rounds=rounds(x.numel()), warmup_rounds=1)
    record(benchmark, benchmark.group, implementation)


@pytest.fixture(scope="module")
def coded():
    codes = FMT.encode(torch.randn(6_500_000, generator=torch.Generator().manual_seed(1)), 1e-3)
    table = HuffmanTable.from_weights(np.bincount(codes.numpy(), minlength=256) + 1.0)
    return codes, table, table.encode(codes)


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_huffman_encode(benchmark, record, coded, one_thread):
    codes, table, _ = coded
    benchmark.group = "huffman_encode 6.5M codes"
    benchmark.pedantic(table.encode, args=(codes,), rounds=10, warmup_rounds=1)
    record(benchmark, benchmark.group, "threepc", processed=codes.numel())


def test_huffman_decode(benchmark, record, coded, one_thread):
    codes, table, stream = coded
    benchmark.group = "huffman_decode 6.5M codes"
    benchmark.pedantic(table.decode, args=(stream, codes.numel()), rounds=10, warmup_rounds=1)
    record(benchmark, benchmark.group, "threepc", processed=codes.numel())
