"""Plain-torch reference kernels: the executable specification.

Every other implementation (the C++ extension, numba) must return exactly what these return;
tests/test_kernels.py and tests/test_codecs.py hold these to independent oracles. Arguments are
checked by ``checks`` (the errors the C++ kernels raise). Any device: the reference also serves
CUDA tensors when the extension has no CUDA kernels.

* ``topk_abs(x, k)``: the k entries of largest |x|, ties broken by the lowest index, returned
  as (values, indices) with indices ascending. Magnitudes are ordered by the bits of |x|
  (NaN above +inf, -0 equal to +0), the order of ``torch.sort`` on the IEEE bit pattern.
* ``ef21_topk_step(grad, h, k)``: d = grad - h in fp32; (values, indices) = topk_abs(d, k);
  h[indices] += values (EF21's update g_i <- g_i + TopK(grad - g_i)).
* ``sparse_accumulate(out, values, indices, alpha)``: out[indices[j]] += alpha * values[j], row
  after row of the (ranks, k) inputs, so every coordinate sums in rank order.
* ``float_encode(v, exponent, mantissa, bias, scale, seed)``: the code (uint8) of x = v / scale
  (fp32 division) in the float format [1, exponent, mantissa] with ``bias``, subnormals and no
  inf/NaN codes. Code = sign << (e + m) | E << m | M; value (E > 0) (1 + M/2^m) 2^(E - bias),
  (E = 0) (M/2^m) 2^(1 - bias). Magnitudes beyond the largest code saturate; a magnitude that
  rounds to 0 gets code 0 (no negative zero). ``seed < 0``: round to nearest, a tie to the candidate
  that is an even multiple of the two candidates' distance (the even code when m > 0); else stochastic rounding, up with probability (|x| - lo)/(hi - lo) drawn from
  splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15) for element i (exact up to 2^-40 of a step).
  Non-finite x raises ValueError.
* ``float_decode(codes, exponent, mantissa, bias, scale)``: the fp32 value of each code times
  ``scale`` (one fp32 product).
* ``sign_encode(x, block)``: the scaled sign of x (flattened) in blocks of ``block`` entries (the
  last one shorter; an empty x has one block with scale 0). Signs: bit j % 8 of byte j // 8 is 1
  iff x_j < 0 (so -0 and NaN count as +). Scale of block b with n_b entries: the sum of |x_j| in
  fp64 (exact for fp32 terms within 2^18 of each other; any order rounds alike otherwise but for
  a 2^-29 chance), divided by n_b in fp64, rounded to fp32, saturated to bf16's largest finite
  value when finite, rounded to bf16 (ties to even; inf stays, NaN stays NaN). Returns (signs uint8
  [ceil(d / 8)], scales bf16[max(1, ceil(d / block))]).
* ``sign_residual(v, block)``: sign_encode(v, block), and v_j <- v_j - sign_j s_b in place (fp32).
* ``sign_decode(signs, scales, numel, block)``: the fp32 vector sign_j s_b of ``numel`` entries.
* ``sign_accumulate(out, signs, scales, block, alpha)``: for each payload r in list order,
  out_j <- out_j + sign_rj a_rb with a_rb = fp32(s_rb * alpha) (one fp32 product per block, one
  fp32 sum per entry and payload: rank order, no fused multiply-add).
* ``adam_normalize(grad, m, v, c1, c2, beta1, beta2, eps, share)``: Adam's moments and the
  normalised gradient, every operation one fp32 rounding (no fused multiply-add), every constant
  rounded to fp32 first (beta1, 1 - beta1, ..., computed in float64): with g = fp32(grad),
  m' = beta1 m + (1 - beta1) g, v' = beta2 v + (1 - beta2) (g g), v^ = v' c2; w = v^ when
  share = 1, else w = v^ share + s (1 - share) with s = min(m' m' c1, v^) (NaN if either is);
  d = g / (sqrt(w) + eps) with sqrt correctly rounded, and 0 where sqrt(w) + eps = 0. c1, c2 (the bias corrections
  1 / (1 - beta1^k)^2 and 1 / (1 - beta2^k)) hold one value or one per entry. Returns new
  tensors (m', v', d); m and v are not written.
* ``adam_momentum(grad, m, v, u, c1, c2, beta1, beta2, eps, share)``: ``adam_normalize``, then the
  momentum of d, u' = beta1 u + (1 - beta1) d, and u^ = u' sqrt(c1) (sqrt correctly rounded; with
  c1 = 1 / (1 - beta1^k)^2, u^ is u' bias-corrected). Returns new tensors (m', v', u', u^).
* ``packed_encode(values, indices, numel, block, exponent, mantissa, bias)``: a Top-K support
  (indices ascending strictly in [0, numel)) and its values in about 16 bits an entry. With
  top = max |values| (fp32) and M the format's largest value (finite in fp32, else ValueError):
  the scale s (fp32[1]) is the least fp32 with s M >= top, at least 2^-149 (fp32's least
  subnormal); 1 when top = 0 or there are no values; NaN when a value is not finite or no finite
  fp32 is large enough. codes = float_encode(values, ..., s, -1) (round to
  nearest), all 0 when s is NaN. counts (uint8[ceil(numel / block)]): how many indices each block
  of ``block`` (<= 255) entries holds; offsets (uint8): index - block floor(index / block).
  Returns (codes, scale, counts, offsets).
* ``packed_accumulate(out, codes, scales, counts, offsets, block, exponent, mantissa, bias,
  alpha)``: for each payload r in list order, its entries j in order, with b_j the block that
  holds entry j (blocks ascending, counts[b] entries each): out[b_j block + offsets_j] +=
  alpha float_decode(codes_j, ..., s_r) (as ``sparse_accumulate`` of the decoded values at the
  decoded indices; a NaN scale decodes to NaN).
* Float64 sums in a fixed order, so that every implementation gives the same bits: the terms
  (each exact in float64) fall in blocks of ``SUM_BLOCK`` = 2^16; within a block, term i adds
  into lane i mod ``SUM_LANES`` = 32, each lane in index order from +0; a block's sum is
  lane 0 + lane 1 + ... + lane 31, left to right; the sum is the blocks' sums added left to right.
* ``squared_distances(x, others)``: ||x - o||^2 for each o in ``others`` (float64[len(others)]),
  the ordered sum of d_i^2, d_i = x_i - o_i one fp32 subtraction of the values read as fp32
  (fp16/bf16 exactly). NaN if a difference is NaN, +inf if one overflows.
* ``abs_moments(x)``: float64[3], the ordered sums of [x_i != 0] (a NaN counts), |x_i| and
  x_i^2, the values read as fp32 (exact in float64, as their squares).
* ``huffman_encode(symbols, codes, lengths)``: symbol s as the ``lengths[s]`` low bits of
  ``codes[s]``, most significant bit first, concatenated MSB-first into bytes; the last byte is
  padded with zero bits; a symbol without a codeword (length 0) raises ValueError.
  ``huffman_decode(stream, n, codes, lengths)`` reads n symbols back (ValueError when the stream
  runs out or holds a bit string that starts no codeword).
* ``rans_encode(symbols, freqs)``: rANS (Duda 2013) with k = ``checks.rans_states(n)`` interleaved
  32-bit states (2, or 4 for n >= 2^16 symbols) and byte-wise renormalisation. With M = sum f =
  2^p (p <= 16), c_s = f_0 + ... + f_{s-1} and L = 2^23, symbol i uses state j = i mod k. Every
  state starts at L; symbols are coded last to first: while x_j >= 2^(31 - p) f_s, emit the byte
  x_j mod 256 and x_j <- floor(x_j / 256); then x_j <- floor(x_j / f_s) M + (x_j mod f_s) + c_s
  (so L <= x_j < 2^31 throughout). The stream is the emitted bytes in the order emitted, then
  x_{k-1}, ..., x_0 as big-endian uint32 (read back to front, the decoder's order: x_0, ..., x_{k-1},
  the bytes last emitted first); a symbol of frequency 0 raises ValueError. ``rans_decode(stream,
  n, freqs)`` inverts it from the end: read x_0, ..., x_{k-1} (each in [L, 2^31)); for i = 0 ..
  n-1, j = i mod k, r = x_j mod M, s the symbol with c_s <= r < c_s + f_s, x_j <- f_s floor(x_j / M)
  + r - c_s, and while x_j < L, x_j <- 256 x_j + the preceding byte. ValueError unless that
  reaches the stream's first byte exactly there with every state back at L (a corrupt or
  truncated stream, or a wrong n).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from . import checks
from .checks import RANS_LOW, rans_states

_ABS_MASK = 0x7FFFFFFF
NAN_KEY = 0x7F800001  # every NaN's key: one magnitude above +inf, whatever its sign and payload


def magnitude_key(x: Tensor) -> Tensor:
    """int32 key whose order is the order of |x|: the fp32 bit pattern without its sign, every NaN
    as one magnitude above +inf. (A NaN's payload and sign out of ``grad - h`` are left open by
    IEEE and differ between CPUs and GPUs, which return one canonical NaN: ranking NaNs by them
    would make the selection differ too.)"""
    return (x.reshape(-1).float().contiguous().view(torch.int32) & _ABS_MASK).clamp_max_(NAN_KEY)


def topk_abs(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    checks.topk_abs(x, k)
    return _topk_abs(x, k)


def _topk_abs(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    flat = x.reshape(-1)
    order = torch.sort(magnitude_key(flat), descending=True, stable=True).indices[:k]
    indices = order.sort().values
    return flat[indices], indices


def ef21_topk_step(grad: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    checks.ef21_topk_step(grad, h, k)
    d = grad.reshape(-1).float() - h.view(-1)
    values, indices = _topk_abs(d, k)
    h.view(-1)[indices] += values
    return values, indices


def sparse_accumulate(out: Tensor, values: Tensor, indices: Tensor, alpha: float = 1.0) -> None:
    checks.sparse_accumulate(out, values, indices, alpha)
    if values.numel() == 0:
        return
    rows = values.shape[0] if values.dim() > 1 else 1
    flat = out.view(-1)
    for v, i in zip(values.float().reshape(rows, -1), indices.long().reshape(rows, -1)):
        flat.index_add_(0, i, v, alpha=alpha)


# -- float conversion -------------------------------------------------------------------------
_GOLDEN = 0x9E3779B97F4A7C15
_SHIFT_CAP = 40  # shifts beyond this round x (< 2^-16 of the smallest step) as if shifted by 40


def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(seed: int, n: int, device: torch.device | None = None) -> Tensor:
    """splitmix64(seed + (i + 1) * golden) for i < n, as int64 bit patterns."""
    z = torch.arange(1, n + 1, dtype=torch.int64, device=device) * _signed(_GOLDEN) + _signed(seed & (2**64 - 1))
    z = (z ^ _shr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _signed(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


def float_encode(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float, seed: int) -> Tensor:
    checks.float_encode(v, exponent, mantissa, bias, scale)
    x = v.reshape(-1).float() / torch.tensor(scale, dtype=torch.float32, device=v.device)
    checks.finite(x)
    bits = x.view(torch.int32).long() & 0xFFFFFFFF
    field = (bits >> 23) & 0xFF
    frac = bits & 0x7FFFFF
    a = torch.where(field > 0, frac | 0x800000, frac)  # the 24-bit significand
    e = torch.where(field > 0, field - 127, torch.full_like(field, -126)) + bias  # target exponent field
    s = (23 - mantissa + (1 - e).clamp(min=0)).clamp(max=_SHIFT_CAP)
    q, r = a >> s, a & ((1 << s) - 1)
    if seed < 0:
        half = 1 << (s - 1)
        up = (r > half) | ((r == half) & (q & 1 == 1))
    else:
        up = (splitmix64(seed, x.numel(), x.device) & ((1 << s) - 1)) < r
    magnitude = (((e - 1).clamp(min=0) << mantissa) + q + up.long()).clamp(max=(1 << (exponent + mantissa)) - 1)
    sign = (bits >> 31) << (exponent + mantissa)
    return torch.where(magnitude > 0, sign | magnitude, 0).to(torch.uint8)


def float_decode(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float) -> Tensor:
    checks.float_decode(codes, exponent, mantissa, bias, scale)
    c = codes.reshape(-1).long()
    magnitude = c & ((1 << (exponent + mantissa)) - 1)
    e, m = magnitude >> mantissa, magnitude & ((1 << mantissa) - 1)
    significand = torch.where(e > 0, m + (1 << mantissa), m).float()
    value = torch.ldexp(significand, (e.clamp(min=1) - bias - mantissa).float())
    value = torch.where((c >> (exponent + mantissa)) & 1 == 1, -value, value)
    return value * torch.tensor(scale, dtype=torch.float32, device=value.device)


def float_accumulate(out: Tensor, codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float,
                     alpha: float) -> None:
    checks.float_accumulate(out, codes, exponent, mantissa, bias, scale, alpha)
    decoded = float_decode(codes, exponent, mantissa, bias, scale)
    out.view(-1).add_(decoded * torch.tensor(alpha, dtype=torch.float32, device=decoded.device))


# -- scaled signs -----------------------------------------------------------------------------
_BF16_MAX = torch.finfo(torch.bfloat16).max
_BIT = (1 << torch.arange(8)).to(torch.uint8)


def sign_encode(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    checks.sign_encode(x, block)
    return _sign_encode(x.reshape(-1).float(), block)


def _sign_encode(v: Tensor, block: int) -> tuple[Tensor, Tensor]:
    d, blocks = v.numel(), checks.sign_blocks(v.numel(), block)
    negative = torch.zeros((d + 7) // 8 * 8, dtype=torch.uint8, device=v.device)
    negative[:d] = v < 0
    signs = (negative.view(-1, 8) * _BIT.to(v.device)).sum(1, dtype=torch.uint8)
    counts = torch.full((blocks,), float(block), dtype=torch.float64, device=v.device)
    counts[-1] = max(1, d - block * (blocks - 1))
    magnitudes, whole = v.double().abs(), d // block * block  # no padding: memory of d, whatever the block
    sums = magnitudes[:whole].view(-1, block).sum(1)
    if whole < d or d == 0:
        sums = torch.cat([sums, magnitudes[whole:].sum().reshape(1)])
    return signs, bf16_scales((sums / counts).float())


def bf16_scales(means: Tensor) -> Tensor:
    """fp32 block means as the bf16 scales that travel: finite ones saturated to bf16's largest
    finite value, then rounded to nearest (ties to even); inf stays, NaN stays NaN (its bits are
    left open: torch's conversion writes 0xFFFF, the C++ kernels 0x7FC0)."""
    return torch.where(means.isfinite(), means.clamp(max=_BF16_MAX), means).to(torch.bfloat16)


def sign_residual(v: Tensor, block: int) -> tuple[Tensor, Tensor]:
    checks.sign_residual(v, block)
    signs, scales = _sign_encode(v.view(-1), block)
    v.view(-1).sub_(_sign_decode(signs, scales, v.numel(), block))
    return signs, scales


def sign_decode(signs: Tensor, scales: Tensor, numel: int, block: int) -> Tensor:
    checks.sign_decode(signs, scales, numel, block)
    return _sign_decode(signs, scales, numel, block)


def sign_accumulate(out: Tensor, signs: list[Tensor], scales: list[Tensor], block: int, alpha: float) -> None:
    checks.sign_accumulate(out, signs, scales, block)
    factor = torch.tensor(alpha, dtype=torch.float32, device=out.device)
    for s, c in zip(signs, scales):
        out.view(-1).add_(_sign_decode(s, c, out.numel(), block, factor))


def _sign_decode(signs: Tensor, scales: Tensor, numel: int, block: int, factor: Tensor | None = None) -> Tensor:
    """sign_j s_b, or sign_j fp32(s_b * factor) with an fp32 ``factor``."""
    negative = (signs.reshape(-1, 1) & _BIT.to(signs.device)).ne(0).reshape(-1)[:numel]
    magnitude = scales.float() if factor is None else scales.float() * factor
    magnitude = magnitude[torch.arange(numel, device=magnitude.device) // block]
    return torch.where(negative, -magnitude, magnitude)


# -- Huffman coding ---------------------------------------------------------------------------
def huffman_encode(symbols: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    checks.huffman_encode(symbols, codes, lengths)
    s = symbols.reshape(-1).long().to(codes.device)
    length, code = lengths.long()[s], codes.long()[s]
    position = torch.arange(checks.MAX_CODE_LENGTH, device=s.device)
    bit_of = (code[:, None] >> (length[:, None] - 1 - position).clamp(min=0)) & 1  # MSB first
    bits = bit_of[position < length[:, None]]
    pad = (-bits.numel()) % 8
    bits = torch.cat([bits, bits.new_zeros(pad)]).view(-1, 8)
    return (bits << torch.arange(7, -1, -1, device=s.device)).sum(1).to(torch.uint8).to(symbols.device)


def huffman_decode(stream: Tensor, n: int, codes: Tensor, lengths: Tensor) -> Tensor:
    checks.huffman_decode(stream, n, codes, lengths)
    book = {(int(l), int(c)): s for s, (c, l) in enumerate(zip(codes.tolist(), lengths.tolist())) if l > 0}
    bits = ((stream.reshape(-1).long().cpu()[:, None] >> torch.arange(7, -1, -1)) & 1).reshape(-1).tolist()
    out, position = [], 0
    for _ in range(n):
        code, length = 0, 0
        while (length, code) not in book:
            if length == checks.MAX_CODE_LENGTH or position >= len(bits):
                raise ValueError(checks.CORRUPT_STREAM)
            code, length, position = (code << 1) | bits[position], length + 1, position + 1
        out.append(book[(length, code)])
    return torch.tensor(out, dtype=torch.uint8, device=stream.device)


# -- rANS coding ------------------------------------------------------------------------------
def rans_encode(symbols: Tensor, freqs: Tensor) -> Tensor:
    precision = checks.rans_encode(symbols, freqs)
    f = freqs.tolist()
    c = [0, *itertools.accumulate(f)]
    states = rans_states(symbols.numel())
    x = [RANS_LOW] * states
    emitted = []
    for i, s in reversed(list(enumerate(symbols.reshape(-1).tolist()))):
        j = i % states
        while x[j] >= f[s] << (31 - precision):
            emitted.append(x[j] & 0xFF)
            x[j] >>= 8
        x[j] = (x[j] // f[s] << precision) + x[j] % f[s] + c[s]
    tail = b"".join(state.to_bytes(4, "big") for state in reversed(x))
    return torch.tensor([*emitted, *tail], dtype=torch.uint8, device=symbols.device)


def rans_decode(stream: Tensor, n: int, freqs: Tensor) -> Tensor:
    precision = checks.rans_decode(stream, n, freqs)
    f = freqs.tolist()
    c = [0, *itertools.accumulate(f)]
    symbol_of = [s for s, count in enumerate(f) for _ in range(count)]  # slot r -> s
    data = bytes(reversed(stream.reshape(-1).tolist()))  # back to front
    states = rans_states(n)
    if len(data) < 4 * states:
        raise ValueError(checks.RANS_CORRUPT_STREAM)
    x = [int.from_bytes(data[4 * j:4 * j + 4], "little") for j in range(states)]
    if not all(RANS_LOW <= state < 1 << 31 for state in x):
        raise ValueError(checks.RANS_CORRUPT_STREAM)
    position, out = 4 * states, []
    for i in range(n):
        j = i % states
        r = x[j] & ((1 << precision) - 1)
        s = symbol_of[r]
        x[j] = f[s] * (x[j] >> precision) + r - c[s]
        while x[j] < RANS_LOW:
            if position == len(data):
                raise ValueError(checks.RANS_CORRUPT_STREAM)
            x[j], position = x[j] << 8 | data[position], position + 1
        out.append(s)
    if position != len(data) or x != [RANS_LOW] * states:
        raise ValueError(checks.RANS_CORRUPT_STREAM)
    return torch.tensor(out, dtype=torch.uint8, device=stream.device)


# -- Adam's normalisation ---------------------------------------------------------------------
def adam_normalize(grad: Tensor, m: Tensor, v: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                   eps: float, share: float) -> tuple[Tensor, Tensor, Tensor]:
    checks.adam_normalize(grad, m, v, c1, c2, beta1, beta2, eps, share)

    def fp32(x: float) -> Tensor:
        return torch.tensor(x, dtype=torch.float32, device=m.device)

    g = grad.reshape(-1).float()
    m_new = m.view(-1) * fp32(beta1) + g * fp32(1.0 - beta1)
    v_new = v.view(-1) * fp32(beta2) + (g * g) * fp32(1.0 - beta2)
    w = v_new * c2.view(-1)
    if share < 1.0:
        s = torch.minimum((m_new * m_new) * c1.view(-1), w)
        w = w * fp32(share) + s * fp32(1.0 - share)
    denominator = _sqrt(w) + fp32(eps)
    d = torch.where(denominator == 0.0, 0.0, g / denominator)
    return m_new, v_new, d


def _sqrt(x: Tensor) -> Tensor:
    """fp32 square root, correctly rounded (torch's fp32 sqrt is not, with AVX-512)."""
    return x.double().sqrt().float()


def adam_momentum(grad: Tensor, m: Tensor, v: Tensor, u: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                  eps: float, share: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    checks.adam_momentum(grad, m, v, u, c1, c2, beta1, beta2, eps, share)
    m_new, v_new, d = adam_normalize(grad, m, v, c1, c2, beta1, beta2, eps, share)
    b1, rest = (torch.tensor(x, dtype=torch.float32, device=m.device) for x in (beta1, 1.0 - beta1))
    u_new = u.view(-1) * b1 + d * rest
    return m_new, v_new, u_new, u_new * _sqrt(c1.view(-1))


# -- float64 sums in a fixed order ----------------------------------------------------------
def squared_distances(x: Tensor, others: list[Tensor]) -> Tensor:
    checks.squared_distances(x, others)
    if not others:
        return x.new_zeros(0, dtype=torch.float64)
    return torch.stack([_ordered_sum((x.reshape(-1).float() - o.reshape(-1).float()).double().square()) for o in others])


def abs_moments(x: Tensor) -> Tensor:
    checks.abs_moments(x)
    v = x.reshape(-1).float().double()
    return torch.stack([_ordered_sum((v != 0).double()), _ordered_sum(v.abs()), _ordered_sum(v.square())])


def momentum_compensate(grad: Tensor, u: Tensor, e: Tensor, beta: float, gain: float, carry: float = 1.0, *,
                        u_new: Tensor, v: Tensor) -> Tensor:
    checks.momentum_compensate(grad, u, e, beta, gain, carry, u_new, v)
    g = grad.reshape(-1).float()
    b, k, c = (torch.tensor(x, dtype=torch.float32, device=u.device) for x in (beta, gain, carry))
    momentum = u * b + g * k  # two fp32 products, then their fp32 sum
    u_new.copy_(momentum)
    v.copy_(e * c + momentum)  # a product (exact for carry 1), then the sum
    return torch.stack([_ordered_sum(g.double().square()), _ordered_sum(u.double() * g.double())])


def _ordered_sum(terms: Tensor) -> Tensor:
    """The float64 ``terms`` summed in the order of the module docstring (``cumsum`` adds in index order)."""
    blocks = max(1, -(-terms.numel() // checks.SUM_BLOCK))
    padded = torch.nn.functional.pad(terms, (0, blocks * checks.SUM_BLOCK - terms.numel()))  # +0: no change
    lanes = padded.view(blocks, -1, checks.SUM_LANES).cumsum(1)[:, -1]
    sums = lanes[:, 0]
    for lane in range(1, checks.SUM_LANES):
        sums = sums + lanes[:, lane]
    return sums.cumsum(0)[-1]


# -- Top-K packed in 16 bits an entry ---------------------------------------------------------
def _max_value(exponent: int, mantissa: int, bias: int) -> float:
    """The largest value of the float format [1, exponent, mantissa] with ``bias``."""
    return float_decode(torch.tensor([(1 << (exponent + mantissa)) - 1], dtype=torch.uint8), exponent, mantissa, bias,
                        1.0).item()


def packed_scale(top: float, max_value: float) -> float:
    """s: the least fp32 with s * max_value >= top, at least 2^-149; 1 for top = 0; NaN for a
    non-finite top or when no finite fp32 is large enough."""
    if not math.isfinite(top):
        return math.nan
    if top == 0.0:
        return 1.0
    s = torch.tensor(max(top / max_value, 2.0 ** -149), dtype=torch.float32)
    if float(s) * max_value < top:
        s = torch.nextafter(s, torch.tensor(math.inf, dtype=torch.float32))
    return float(s) if math.isfinite(float(s)) else math.nan


def packed_encode(values: Tensor, indices: Tensor, numel: int, block: int, exponent: int, mantissa: int,
                  bias: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    checks.packed_encode(values, indices, numel, block, exponent, mantissa, bias)
    v, i = values.reshape(-1).float(), indices.reshape(-1).long()
    top = float(v.abs().max()) if v.numel() else 0.0  # NaN if any value is
    scale = packed_scale(top, _max_value(exponent, mantissa, bias))
    codes = (float_encode(v, exponent, mantissa, bias, scale, -1) if math.isfinite(scale)
             else torch.zeros(v.numel(), dtype=torch.uint8, device=v.device))
    blocks = i.div(block, rounding_mode="floor")
    counts = torch.bincount(blocks, minlength=checks.packed_blocks(numel, block))
    return (codes, torch.tensor([scale], dtype=torch.float32, device=v.device), counts.to(torch.uint8),
            (i - blocks * block).to(torch.uint8))


def packed_accumulate(out: Tensor, codes: list[Tensor], scales: list[Tensor], counts: list[Tensor],
                      offsets: list[Tensor], block: int, exponent: int, mantissa: int, bias: int,
                      alpha: float = 1.0) -> None:
    checks.packed_accumulate(out, codes, scales, counts, offsets, block, exponent, mantissa, bias)
    for payload in zip(codes, scales, counts, offsets):
        if payload[0].numel():
            sparse_accumulate(out, *packed_decode(*payload, block, exponent, mantissa, bias), alpha)


def packed_decode(codes: Tensor, scale: Tensor, counts: Tensor, offsets: Tensor, block: int, exponent: int,
                  mantissa: int, bias: int) -> tuple[Tensor, Tensor]:
    """A ``packed_encode`` payload as (fp32 values, int64 indices): each code's value times the
    scale (one fp32 product; NaN where the scale is), at block b_j * block + offsets_j (no
    argument checks: ``packed_accumulate``'s)."""
    values = float_decode(codes, exponent, mantissa, bias, 1.0) * scale.reshape(-1)
    return values, packed_positions(counts, offsets, block)


def packed_positions(counts: Tensor, offsets: Tensor, block: int) -> Tensor:
    """The int64 indices of a ``packed_encode`` payload's entries: b_j * block + offsets_j, b_j the
    block entry j falls in by the per-block ``counts``."""
    starts = torch.arange(counts.numel(), device=counts.device) * block
    return torch.repeat_interleave(starts, counts.reshape(-1).long(),
                                   output_size=offsets.numel()) + offsets.reshape(-1).long()  # K known: no sync
