"""Argument checks of the Python implementations (``reference``, ``numba_cpu``), one function per op.

They raise what the C++ kernels raise (csrc/op_checks.h; keep the two in step): TypeError,
ValueError or IndexError with a message that names the problem and the fix, before any output
is touched.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_CODE_LENGTH = 16  # Huffman codewords
RANS_MAX_PRECISION = 16  # rANS frequencies sum to 2^precision, precision <= 16
RANS_LOW = 1 << 23  # rANS states lie in [RANS_LOW, 2^31)
RANS_WIDE = 1 << 16  # messages of this many symbols or more interleave 4 rANS states, shorter ones 2

FP32_MAX = torch.finfo(torch.float32).max  # scales and alphas are fp32 in the kernels: these bound them
FP32_TRUE_MIN = 2.0 ** -149
SUM_LANES = 32  # float64 sums in a fixed order (squared_distances, abs_moments): entry i of a block into lane i mod 32
SUM_BLOCK = 1 << 16  # ... and blocks of 2^16 entries summed on their own before the blocks are added
NON_FINITE = ("float_encode got NaN or Inf values; the float formats have no codes for them. "
              "Check the gradients (loss scaling, a diverged step) before compressing")
NO_CODEWORD = ("huffman_encode: a symbol has no codeword (length 0) in this table; build the table from weights "
               "that cover every symbol")
CORRUPT_STREAM = "huffman_decode: the stream is corrupt or shorter than n symbols"
OVERLAP = ("huffman_decode: two codewords overlap (one is a prefix of the other; a Huffman code is prefix-free); "
           "build the table with compressors.codecs.huffman.HuffmanTable")
NO_FREQUENCY = ("rans_encode: a symbol has frequency 0 in this table; build the table from weights that cover "
                "every symbol")
RANS_CORRUPT_STREAM = "rans_decode: the stream is corrupt or does not hold n symbols"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def rans_states(n: int) -> int:
    """How many interleaved rANS states code a message of n symbols (symbol i uses state i mod k):
    4 from ``RANS_WIDE`` symbols on (more independent chains for the CPU to overlap), else 2 (each
    state adds 4 bytes to the stream)."""
    return 4 if n >= RANS_WIDE else 2


def _floating(op: str, name: str, t: Tensor) -> None:
    if t.dtype not in _FLOATS:
        raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}; cast it with .float()")


def _k(op: str, k: int, n: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"{op}: k must lie in [0, numel] = [0, {n}], got k = {k}")


def _non_contiguous(t: Tensor) -> str:
    return "" if t.is_contiguous() else ", non-contiguous"


def topk_abs(x: Tensor, k: int) -> None:
    _floating("topk_abs", "x", x)
    _k("topk_abs", k, x.numel())


def ef21_topk_step(grad: Tensor, h: Tensor, k: int) -> None:
    _floating("ef21_topk_step", "grad", grad)
    if h.dtype != torch.float32 or not h.is_contiguous():
        raise TypeError("ef21_topk_step: h must be a contiguous float32 tensor (the fp32 estimate, updated in place), "
                        f"got {h.dtype}{_non_contiguous(h)}; keep the estimate as one contiguous float32 tensor")
    if grad.numel() != h.numel():
        raise ValueError(f"ef21_topk_step: grad has {grad.numel()} elements but h has {h.numel()}")
    if grad.device != h.device:
        raise ValueError(f"ef21_topk_step: grad is on {grad.device} but h on {h.device}; move them to one device")
    _k("ef21_topk_step", k, h.numel())
    apart("ef21_topk_step", "h", h, "grad", grad)


def _alpha(op: str, alpha: float) -> None:
    if not abs(alpha) <= FP32_MAX:
        raise ValueError(f"{op}: alpha must be finite as an fp32 (|alpha| <= 3.4e38: the kernels add in fp32), "
                         f"got {alpha}")


def sparse_accumulate(out: Tensor, values: Tensor, indices: Tensor, alpha: float) -> None:
    _alpha("sparse_accumulate", alpha)
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise TypeError(f"sparse_accumulate: out must be a contiguous float32 tensor, got {out.dtype}"
                        f"{_non_contiguous(out)}")
    if values.numel() != indices.numel():
        raise ValueError(f"sparse_accumulate: values has {values.numel()} elements but indices has {indices.numel()}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"sparse_accumulate: indices must be int64 or int32, got {indices.dtype}")
    if values.device != out.device or indices.device != out.device:
        raise ValueError(f"sparse_accumulate: out, values and indices must be on one device, got {out.device}, "
                         f"{values.device} and {indices.device}")
    apart("sparse_accumulate", "out", out, "values", values)
    apart("sparse_accumulate", "out", out, "indices", indices)
    if indices.numel():
        lo, hi = (int(t) for t in torch.aminmax(indices))
        if lo < 0 or hi >= out.numel():
            raise IndexError(f"sparse_accumulate: indices must lie in [0, {out.numel()}), got [{lo}, {hi}]")


def _format(exponent: int, mantissa: int, bias: int, scale: float) -> None:
    if not (exponent >= 1 and mantissa >= 0 and exponent + mantissa <= 7):
        raise ValueError(f"float format [1, {exponent}, {mantissa}] needs exponent >= 1, mantissa >= 0 and "
                         "exponent + mantissa <= 7 (codes fit in one byte)")
    if not -64 <= bias <= 64:
        raise ValueError(f"float format bias must lie in [-64, 64], got {bias}")
    if not FP32_TRUE_MIN <= scale <= FP32_MAX:
        raise ValueError(f"float format scale must be positive and finite as an fp32 (in [2^-149, 3.4e38]: the "
                         f"codecs scale in fp32), got {scale}")


def float_encode(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float) -> None:
    _floating("float_encode", "v", v)
    _format(exponent, mantissa, bias, scale)


def finite(x: Tensor) -> None:
    """float_encode's data check, on x = v / scale."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(NON_FINITE)


def float_decode(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float) -> None:
    if codes.dtype != torch.uint8:
        raise TypeError(f"float_decode: codes must be uint8, got {codes.dtype}")
    _format(exponent, mantissa, bias, scale)


def float_accumulate(out: Tensor, codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float,
                     alpha: float) -> None:
    if codes.dtype != torch.uint8:
        raise TypeError(f"float_accumulate: codes must be uint8, got {codes.dtype}")
    _format(exponent, mantissa, bias, scale)
    _alpha("float_accumulate", alpha)
    if out.dtype != torch.float32 or not out.is_contiguous() or out.numel() != codes.numel() or out.device != codes.device:
        raise ValueError(f"float_accumulate: out must be a contiguous float32 tensor of {codes.numel()} elements on "
                         f"{codes.device} (one per code), got {out.dtype} of {out.numel()} elements on {out.device}"
                         f"{_non_contiguous(out)}")
    apart("float_accumulate", "out", out, "codes", codes)


def out(op: str, out: Tensor, like: Tensor, dtype: torch.dtype) -> None:
    """``out`` of a float_encode/decode.out call: contiguous, ``dtype``, like's size and device."""
    if out.dtype != dtype or not out.is_contiguous() or out.numel() != like.numel() or out.device != like.device:
        name = str(dtype).removeprefix("torch.")
        raise ValueError(f"{op}: out must be a contiguous {name} tensor of {like.numel()} elements on {like.device}, "
                         f"got {out.dtype} of {out.numel()} elements on {out.device}{_non_contiguous(out)}; "
                         f"allocate it with torch.empty({like.numel()}, dtype={dtype})")
    apart(op, "out", out, "v" if dtype == torch.uint8 else "codes", like)


def _huffman_table(op: str, codes: Tensor, lengths: Tensor) -> None:
    if codes.dtype != torch.int32 or lengths.dtype != torch.uint8 or codes.dim() != 1 \
            or codes.shape != lengths.shape or codes.numel() > 256:
        raise TypeError(f"{op}: a Huffman table is (codes int32[A], lengths uint8[A]) with A <= 256 symbols; "
                        "build one with compressors.codecs.huffman.HuffmanTable")
    length, code = lengths.long(), codes.long()
    bad = ((length > MAX_CODE_LENGTH) | ((length > 0) & ((code < 0) | (code >> length != 0)))).nonzero()
    if bad.numel():
        s = int(bad[0])
        raise ValueError(f"{op}: symbol {s} has the invalid codeword {int(code[s])} of length {int(length[s])} "
                         "(codewords have 1 to 16 bits); build the table with compressors.codecs.huffman.HuffmanTable")


def _coded_symbols(op: str, symbols: Tensor, present: Tensor, missing: str) -> None:
    """uint8 symbols, every one of them with a code (``present[s]``; symbols past its end have none)."""
    if symbols.dtype != torch.uint8:
        raise TypeError(f"{op}: symbols must be uint8, got {symbols.dtype}")
    if symbols.numel():
        coded = torch.zeros(256, dtype=torch.bool, device=present.device)
        coded[: present.numel()] = present
        if not bool(coded[symbols.reshape(-1).to(present.device).long()].all()):
            raise ValueError(missing)


def _stream(op: str, stream: Tensor, n: int) -> None:
    """A uint8 byte stream and a symbol count n >= 0."""
    if stream.dtype != torch.uint8:
        raise TypeError(f"{op}: stream must be uint8, got {stream.dtype}")
    if n < 0:
        raise ValueError(f"{op}: n must be >= 0, got {n}")


def huffman_encode(symbols: Tensor, codes: Tensor, lengths: Tensor) -> None:
    _huffman_table("huffman_encode", codes, lengths)
    _coded_symbols("huffman_encode", symbols, lengths > 0, NO_CODEWORD)


def huffman_decode(stream: Tensor, n: int, codes: Tensor, lengths: Tensor) -> None:
    _huffman_table("huffman_decode", codes, lengths)
    _stream("huffman_decode", stream, n)
    if n > 8 * stream.numel():  # every codeword has a bit at least: before n bytes are allocated
        raise ValueError(CORRUPT_STREAM)
    # Prefix-free (decoding needs it; the extension checks it while filling its lookup table): the
    # codewords' intervals [c, c + 1) 2^(16 - l) of [0, 2^16) do not overlap.
    length = lengths.long()
    used = (length > 0).nonzero().reshape(-1)
    starts = codes.long()[used] << (MAX_CODE_LENGTH - length[used])
    order = torch.argsort(starts)
    ends = starts[order] + (1 << (MAX_CODE_LENGTH - length[used][order]))
    if bool((ends[:-1] > starts[order][1:]).any()):
        raise ValueError(OVERLAP)


def rans_precision(op: str, freqs: Tensor) -> int:
    """log2 of the frequencies' sum, after checking the table: int32[A], A <= 256, every entry >= 0,
    the sum a power of two 2^p with p <= RANS_MAX_PRECISION."""
    if freqs.dtype != torch.int32 or freqs.dim() != 1 or freqs.numel() > 256:
        raise TypeError(f"{op}: a rANS table is freqs int32[A] with A <= 256 symbols; "
                        "build one with compressors.codecs.rans.RansTable")
    f = freqs.long()
    total = int(f.sum())
    if bool((f < 0).any()) or total <= 0 or total & (total - 1) or total > 1 << RANS_MAX_PRECISION:
        raise ValueError(f"{op}: the frequencies must be >= 0 and sum to a power of two <= 2^{RANS_MAX_PRECISION}, "
                         f"got sum {total}; build the table with compressors.codecs.rans.RansTable")
    return total.bit_length() - 1


def rans_encode(symbols: Tensor, freqs: Tensor) -> int:
    precision = rans_precision("rans_encode", freqs)
    _coded_symbols("rans_encode", symbols, freqs > 0, NO_FREQUENCY)
    return precision


def rans_decode(stream: Tensor, n: int, freqs: Tensor) -> int:
    precision = rans_precision("rans_decode", freqs)
    _stream("rans_decode", stream, n)
    return precision


def _block(op: str, block: int) -> None:
    if block < 1:
        raise ValueError(f"{op}: block must be at least 1 entry, got {block}")


def sign_blocks(numel: int, block: int) -> int:
    """The number of scales of a scaled-sign payload of ``numel`` entries: ceil(numel / block), and one
    (a zero scale) for an empty tensor."""
    return max(1, -(-numel // block))


def sign_encode(x: Tensor, block: int) -> None:
    _floating("sign_encode", "x", x)
    _block("sign_encode", block)


def sign_residual(v: Tensor, block: int) -> None:
    if v.dtype != torch.float32 or not v.is_contiguous():
        raise TypeError(f"sign_residual: v must be a contiguous float32 tensor (overwritten with v - C(v)), got "
                        f"{v.dtype}{_non_contiguous(v)}; pass v.float().contiguous()")
    _block("sign_residual", block)


def sign_decode(signs: Tensor, scales: Tensor, numel: int, block: int) -> None:
    _block("sign_decode", block)
    if numel < 0:
        raise ValueError(f"sign_decode: numel must be >= 0, got {numel}")
    if signs.dtype != torch.uint8 or scales.dtype != torch.bfloat16:
        raise TypeError(f"sign_decode: signs must be uint8 and scales bfloat16, got {signs.dtype} and {scales.dtype}")
    if signs.numel() != (numel + 7) // 8 or scales.numel() != sign_blocks(numel, block):
        raise ValueError(f"sign_decode: {numel} entries in blocks of {block} need {(numel + 7) // 8} sign bytes and "
                         f"{sign_blocks(numel, block)} scales, got {signs.numel()} and {scales.numel()}; pass the "
                         "payload's numel and the compressor's block")
    if signs.device != scales.device:
        raise ValueError(f"sign_decode: signs are on {signs.device} but scales on {scales.device}; move them to one "
                         "device")


def sign_accumulate(out: Tensor, signs: list[Tensor], scales: list[Tensor], block: int) -> None:
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise TypeError(f"sign_accumulate: out must be a contiguous float32 tensor, got {out.dtype}"
                        f"{_non_contiguous(out)}")
    if len(signs) != len(scales):
        raise ValueError(f"sign_accumulate: {len(signs)} sign tensors but {len(scales)} scale tensors; pass one of "
                         "each per payload")
    for s, c in zip(signs, scales):
        sign_decode(s, c, out.numel(), block)
        if s.device != out.device:
            raise ValueError(f"sign_accumulate: out is on {out.device} but a payload on {s.device}; move them to "
                             "one device")
        apart("sign_accumulate", "out", out, "signs", s)
        apart("sign_accumulate", "out", out, "scales", c)


def adam_normalize(grad: Tensor, m: Tensor, v: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float, eps: float,
                   share: float, op: str = "adam_normalize", states: dict[str, Tensor] | None = None) -> None:
    """adam_normalize's inputs (``op`` adam_momentum: ``states`` m, v and u)."""
    states = states or {"m": m, "v": v}
    _states(op, grad, states)
    for name, t in (("c1", c1), ("c2", c2)):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() not in (1, grad.numel()):
            raise TypeError(f"{op}: {name} must be a contiguous float32 tensor of 1 or {grad.numel()} "
                            f"elements, got {t.dtype} of {t.numel()}{_non_contiguous(t)}")
    if any(t.device != grad.device for t in (*states.values(), c1, c2)):
        raise ValueError(f"{op}: grad, its states, c1 and c2 must be on one device, got grad on {grad.device}, "
                         f"c1 on {c1.device}, c2 on {c2.device}, "
                         + ", ".join(f"{name} on {t.device}" for name, t in states.items()))
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and eps >= 0.0 and 0.0 < share <= 1.0):
        raise ValueError(f"{op} needs 0 <= beta1, beta2 < 1, eps >= 0 and 0 < share <= 1, got beta1={beta1}, "
                         f"beta2={beta2}, eps={eps}, share={share}")


def _states(op: str, grad: Tensor, states: dict[str, Tensor]) -> None:
    """grad floating and each per-entry state contiguous fp32 of grad's size (devices: the caller's)."""
    _floating(op, "grad", grad)
    for name, t in states.items():
        if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != grad.numel():
            raise TypeError(f"{op}: {name} must be a contiguous float32 tensor of grad's {grad.numel()} "
                            f"elements, got {t.dtype} of {t.numel()}{_non_contiguous(t)}")


def adam_momentum(grad: Tensor, m: Tensor, v: Tensor, u: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                  eps: float, share: float) -> None:
    adam_normalize(grad, m, v, c1, c2, beta1, beta2, eps, share, "adam_momentum", {"m": m, "v": v, "u": u})


def new_outputs(op: str, grad: Tensor, inputs: tuple[Tensor, ...], outputs: dict[str, Tensor]) -> None:
    """The outputs of adam_normalize.out, adam_momentum.out and momentum_compensate: contiguous fp32
    of grad's size on its device, overlapping neither each other nor an input (the old states stay
    the rollback)."""
    for name, t in outputs.items():
        if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != grad.numel() or t.device != grad.device:
            raise ValueError(f"{op}: {name} must be a contiguous float32 tensor of {grad.numel()} elements "
                             f"on {grad.device}, got {t.dtype} of {t.numel()} on {t.device}{_non_contiguous(t)}")
    outs = list(outputs.values())
    if grad.numel() and any(_overlap(o, t) for i, o in enumerate(outs) for t in (*outs[i + 1:], grad, *inputs)):
        raise ValueError(f"{op}: the outputs must be new buffers that overlap neither each other nor grad or a "
                         "state (the states stay the rollback)")


def _overlap(a: Tensor, b: Tensor) -> bool:
    """Whether the byte spans of two tensors on one device (first to last element, whatever the
    strides and whichever storages hold them) meet."""
    if not a.numel() or not b.numel() or a.device != b.device:
        return False
    lo_a, lo_b = a.data_ptr(), b.data_ptr()
    return lo_a < lo_b + _span(b) and lo_b < lo_a + _span(a)


def _span(t: Tensor) -> int:
    """Bytes from t's first element to the end of its last (non-negative strides)."""
    return (sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + 1) * t.element_size()


def apart(op: str, out_name: str, out: Tensor, name: str, t: Tensor) -> None:
    """A kernel that writes ``out`` while it reads ``t`` needs them apart: it may write an entry of
    out before it reads the input bytes stored there (the C++ float_decode writes 32 floats at a time)."""
    if _overlap(out, t):
        raise ValueError(f"{op}: {out_name} shares memory with {name}, which the kernel reads while it writes "
                         f"{out_name}; pass a separate buffer ({name}.clone())")


def squared_distances(x: Tensor, others: list[Tensor]) -> None:
    _floating("squared_distances", "x", x)
    for i, o in enumerate(others):
        _floating("squared_distances", f"others[{i}]", o)
        if o.numel() != x.numel():
            raise ValueError(f"squared_distances: x has {x.numel()} elements but others[{i}] has {o.numel()}")
        if o.device != x.device:
            raise ValueError(f"squared_distances: x is on {x.device} but others[{i}] on {o.device}; move them to one "
                             "device")


def abs_moments(x: Tensor) -> None:
    _floating("abs_moments", "x", x)


def momentum_compensate(grad: Tensor, u: Tensor, e: Tensor, beta: float, gain: float, carry: float, u_new: Tensor,
                        v: Tensor) -> None:
    _states("momentum_compensate", grad, {"u": u, "e": e})
    if u.device != grad.device or e.device != grad.device:
        raise ValueError(f"momentum_compensate: grad, u and e must be on one device, got grad on {grad.device}, "
                         f"u on {u.device}, e on {e.device}")
    if not (0.0 <= beta < 1.0 and math.isfinite(gain) and gain >= 0.0 and math.isfinite(carry) and carry >= 0.0):
        raise ValueError(f"momentum_compensate needs 0 <= beta < 1, a finite gain >= 0 and a finite carry >= 0, got "
                         f"beta={beta}, gain={gain}, carry={carry}")
    new_outputs("momentum_compensate", grad, (u, e), {"u_new": u_new, "v": v})


def _packed_block(op: str, block: int) -> None:
    if not 1 <= block <= 255:
        raise ValueError(f"{op}: block must lie in [1, 255] entries (a block's count and an offset in it are "
                         f"bytes), got {block}")


def _packed_format(op: str, exponent: int, mantissa: int, bias: int) -> None:
    """A float format whose largest value, (2 - 2^-m) 2^(2^e - 1 - bias), is a finite fp32."""
    _format(exponent, mantissa, bias, 1.0)
    if (1 << exponent) - 1 - bias >= 128:
        raise ValueError(f"{op}: the float format [1, {exponent}, {mantissa}] with bias {bias} has a largest value "
                         "beyond fp32's; use a larger bias")


def packed_blocks(numel: int, block: int) -> int:
    """The block counts of a packed Top-K payload of ``numel`` entries: ceil(numel / block)."""
    return -(-numel // block)


def packed_encode(values: Tensor, indices: Tensor, numel: int, block: int, exponent: int, mantissa: int,
                  bias: int) -> None:
    """Reads the indices back (a device synchronisation on CUDA): they must be topk_abs's."""
    _floating("packed_encode", "values", values)
    _packed_block("packed_encode", block)
    _packed_format("packed_encode", exponent, mantissa, bias)
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"packed_encode: indices must be int64 or int32, got {indices.dtype}")
    if values.numel() != indices.numel() or values.device != indices.device:
        raise ValueError(f"packed_encode: values ({values.numel()} on {values.device}) and indices "
                         f"({indices.numel()} on {indices.device}) must have one size and one device")
    if numel < 0:
        raise ValueError(f"packed_encode: numel must be >= 0, got {numel}")
    i = indices.reshape(-1)
    if i.numel() and (int(i[0]) < 0 or int(i[-1]) >= numel or bool((i[1:] <= i[:-1]).any())):
        raise IndexError(f"packed_encode: indices must ascend strictly within [0, {numel}) (topk_abs's order); "
                         "pass the support Top-K selected")


def packed_accumulate(out: Tensor, codes: list[Tensor], scales: list[Tensor], counts: list[Tensor],
                      offsets: list[Tensor], block: int, exponent: int, mantissa: int, bias: int) -> None:
    """Reads the counts and offsets back (a device synchronisation on CUDA): every entry must land
    inside ``out``."""
    op = "packed_accumulate"
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise TypeError(f"{op}: out must be a contiguous float32 tensor, got {out.dtype}{_non_contiguous(out)}")
    _packed_block(op, block)
    _packed_format(op, exponent, mantissa, bias)
    if not len(codes) == len(scales) == len(counts) == len(offsets):
        raise ValueError(f"{op}: {len(codes)} codes, {len(scales)} scales, {len(counts)} counts and {len(offsets)} "
                         "offsets tensors; pass one of each per payload")
    blocks = packed_blocks(out.numel(), block)
    for c, s, n, o in zip(codes, scales, counts, offsets):
        if c.dtype != torch.uint8 or n.dtype != torch.uint8 or o.dtype != torch.uint8 or s.dtype != torch.float32:
            raise TypeError(f"{op}: a payload is codes, counts, offsets uint8 and scale float32, got {c.dtype}, "
                            f"{n.dtype}, {o.dtype} and {s.dtype}")
        if any(t.device != out.device for t in (c, s, n, o)):
            raise ValueError(f"{op}: out is on {out.device} but a payload is not; move them to one device")
        for name, t in (("codes", c), ("scales", s), ("counts", n), ("offsets", o)):
            apart(op, "out", out, name, t)
        if s.numel() != 1 or n.numel() != blocks or o.numel() != c.numel():
            raise ValueError(f"{op}: a payload of {out.numel()} entries in blocks of {block} has 1 scale, {blocks} "
                             f"counts and as many offsets as codes, got {s.numel()}, {n.numel()}, {o.numel()} and "
                             f"{c.numel()}; pass the payload's numel and the compressor's block")
        kept = n.reshape(-1).long()
        last = out.numel() - (blocks - 1) * block  # entries in the last block
        tail = o.reshape(-1)[o.numel() - int(kept[-1]):] if blocks else o.reshape(-1)[:0]
        if int(kept.sum()) != c.numel() or bool((o >= block).any()) or bool((tail >= last).any()):
            raise IndexError(f"{op}: a payload's counts sum to {int(kept.sum())} for {c.numel()} codes, or an "
                             f"offset points past its block; the payload is corrupt or not of {out.numel()} entries")
