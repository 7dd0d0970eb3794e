"""Loads the compiled ops (``torch.ops.threepc.*``) and registers their fake kernels.

The fake (meta) kernels give ``torch.compile`` the output shapes without running the op.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

import compressors._C  # noqa: F401  (loading the library registers the ops)

ops = torch.ops.threepc


@functools.cache
def has_kernels_for(device_type: str) -> bool:
    """Whether the ops have kernels for tensors on ``device_type`` ("cuda": built with CUDA)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("threepc::topk_abs", device_type.upper())


@torch.library.register_fake("threepc::topk_abs")
def _topk_abs_fake(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return x.new_empty(k), x.new_empty(k, dtype=torch.long)


@torch.library.register_fake("threepc::ef21_topk_step")
def _ef21_topk_step_fake(grad: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return h.new_empty(k), h.new_empty(k, dtype=torch.long)


@torch.library.register_fake("threepc::sparse_accumulate")
def _sparse_accumulate_fake(out: Tensor, values: Tensor, indices: Tensor, alpha: float = 1.0) -> None:
    return None


@torch.library.register_fake("threepc::float_encode")
def _float_encode_fake(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float, seed: int) -> Tensor:
    return v.new_empty(v.numel(), dtype=torch.uint8)


@torch.library.register_fake("threepc::float_encode.out")
def _float_encode_out_fake(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float, seed: int, *,
                           out: Tensor) -> None:
    return None


@torch.library.register_fake("threepc::float_decode.out")
def _float_decode_out_fake(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float, *,
                           out: Tensor) -> None:
    return None


@torch.library.register_fake("threepc::float_decode")
def _float_decode_fake(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float) -> Tensor:
    return codes.new_empty(codes.numel(), dtype=torch.float32)


@torch.library.register_fake("threepc::huffman_encode")
def _huffman_encode_fake(symbols: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    return symbols.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.uint8)  # depends on the data


@torch.library.register_fake("threepc::huffman_decode")
def _huffman_decode_fake(stream: Tensor, n: int, codes: Tensor, lengths: Tensor) -> Tensor:
    return stream.new_empty(n, dtype=torch.uint8)
