"""numba implementations of the ops: the CPU fallback when the C++ extension is absent.

One typed function per op with the op's signature (tensors in and out, arguments checked by
``checks``) over a numba kernel on contiguous numpy arrays. Selection is the algorithm family of
csrc/topk.cpp without the sampling front end: an exact radix select on the magnitude keys (three
digits of 11, 11 and 10 bits), ties to the lowest index.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from . import checks
from .checks import RANS_LOW, rans_states
from .reference import _max_value, bf16_scales, packed_scale


def _f32(t: Tensor) -> np.ndarray:
    """A contiguous fp32 numpy copy (or view) of t's elements."""
    return t.detach().reshape(-1).float().contiguous().numpy()


def topk_abs(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    checks.topk_abs(x, k)
    _, indices = _topk_abs(_f32(x), k)
    indices = torch.from_numpy(indices)
    return x.reshape(-1)[indices], indices  # x's own elements: fp16/bf16 NaN bits survive (no fp32 round trip)


def ef21_topk_step(grad: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
    checks.ef21_topk_step(grad, h, k)
    values, indices = _ef21_topk_step(_f32(grad), h.view(-1).numpy(), k)
    return torch.from_numpy(values), torch.from_numpy(indices)


def sparse_accumulate(out: Tensor, values: Tensor, indices: Tensor, alpha: float = 1.0) -> None:
    checks.sparse_accumulate(out, values, indices, alpha)
    _sparse_accumulate(out.view(-1).numpy(), _f32(values), indices.reshape(-1).long().numpy(), np.float32(alpha))


def float_encode(v: Tensor, exponent: int, mantissa: int, bias: int, scale: float, seed: int) -> Tensor:
    checks.float_encode(v, exponent, mantissa, bias, scale)
    x = v.reshape(-1).float() / torch.tensor(scale, dtype=torch.float32)  # fp32 division, as the reference
    checks.finite(x)
    return torch.from_numpy(_float_encode(x.contiguous().numpy(), exponent, mantissa, bias, seed))


def float_decode(codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float) -> Tensor:
    checks.float_decode(codes, exponent, mantissa, bias, scale)
    return torch.from_numpy(_float_decode(codes.reshape(-1).contiguous().numpy(), exponent, mantissa, bias,
                                          np.float32(scale)))


def float_accumulate(out: Tensor, codes: Tensor, exponent: int, mantissa: int, bias: int, scale: float,
                     alpha: float) -> None:
    checks.float_accumulate(out, codes, exponent, mantissa, bias, scale, alpha)
    _float_accumulate(out.view(-1).numpy(), codes.reshape(-1).contiguous().numpy(),
                      _decode_table(exponent, mantissa, bias, np.float32(scale)) * np.float32(alpha))


def huffman_encode(symbols: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    checks.huffman_encode(symbols, codes, lengths)
    return torch.from_numpy(_huffman_encode(symbols.reshape(-1).contiguous().numpy(), codes.numpy(),
                                            lengths.numpy()))


def huffman_decode(stream: Tensor, n: int, codes: Tensor, lengths: Tensor) -> Tensor:
    checks.huffman_decode(stream, n, codes, lengths)
    symbols, complete = _huffman_decode(stream.reshape(-1).contiguous().numpy(), n, codes.numpy(), lengths.numpy())
    if not complete:
        raise ValueError(checks.CORRUPT_STREAM)
    return torch.from_numpy(symbols)


def rans_encode(symbols: Tensor, freqs: Tensor) -> Tensor:
    precision = checks.rans_encode(symbols, freqs)
    return torch.from_numpy(_rans_encode(symbols.reshape(-1).contiguous().numpy(), freqs.numpy(), precision,
                                         rans_states(symbols.numel())))


def rans_decode(stream: Tensor, n: int, freqs: Tensor) -> Tensor:
    precision = checks.rans_decode(stream, n, freqs)
    symbols, complete = _rans_decode(stream.reshape(-1).contiguous().numpy(), n, freqs.numpy(), precision,
                                     rans_states(n))
    if not complete:
        raise ValueError(checks.RANS_CORRUPT_STREAM)
    return torch.from_numpy(symbols)


def sign_encode(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    checks.sign_encode(x, block)
    signs, means = _sign_encode(_f32(x), block, checks.sign_blocks(x.numel(), block))
    return torch.from_numpy(signs), bf16_scales(torch.from_numpy(means))


def sign_residual(v: Tensor, block: int) -> tuple[Tensor, Tensor]:
    checks.sign_residual(v, block)
    flat = v.view(-1).numpy()
    signs, means = _sign_encode(flat, block, checks.sign_blocks(v.numel(), block))
    scales = bf16_scales(torch.from_numpy(means))
    _sign_subtract(flat, signs, scales.float().numpy(), block, np.float32(1.0))
    return torch.from_numpy(signs), scales


def sign_decode(signs: Tensor, scales: Tensor, numel: int, block: int) -> Tensor:
    checks.sign_decode(signs, scales, numel, block)
    return torch.from_numpy(_sign_decode(signs.contiguous().numpy(), scales.float().numpy(), numel, block))


def sign_accumulate(out: Tensor, signs: list[Tensor], scales: list[Tensor], block: int, alpha: float) -> None:
    checks.sign_accumulate(out, signs, scales, block)
    flat = out.view(-1).numpy()
    for s, c in zip(signs, scales):
        _sign_subtract(flat, s.contiguous().numpy(), c.float().numpy(), block, np.float32(-alpha))


def squared_distances(x: Tensor, others: list[Tensor]) -> Tensor:
    checks.squared_distances(x, others)
    flat = _f32(x)
    return torch.tensor([_ordered_sums(flat, _f32(o), True, checks.SUM_BLOCK, checks.SUM_LANES)[0] for o in others],
                        dtype=torch.float64)


def abs_moments(x: Tensor) -> Tensor:
    checks.abs_moments(x)
    flat = _f32(x)
    return torch.from_numpy(_ordered_sums(flat, flat, False, checks.SUM_BLOCK, checks.SUM_LANES))


def momentum_compensate(grad: Tensor, u: Tensor, e: Tensor, beta: float, gain: float, carry: float = 1.0, *,
                        u_new: Tensor, v: Tensor) -> Tensor:
    checks.momentum_compensate(grad, u, e, beta, gain, carry, u_new, v)
    return torch.from_numpy(_momentum_compensate(_f32(grad), u.view(-1).numpy(), e.view(-1).numpy(),
                                                 u_new.view(-1).numpy(), v.view(-1).numpy(), np.float32(beta),
                                                 np.float32(gain), np.float32(carry), checks.SUM_BLOCK,
                                                 checks.SUM_LANES))


def packed_encode(values: Tensor, indices: Tensor, numel: int, block: int, exponent: int, mantissa: int,
                  bias: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    checks.packed_encode(values, indices, numel, block, exponent, mantissa, bias)
    v = _f32(values)
    top = float(np.abs(v).max()) if v.size else 0.0  # NaN if any value is
    scale = np.float32(packed_scale(top, _max_value(exponent, mantissa, bias)))
    codes = (_float_encode(v / scale, exponent, mantissa, bias, -1) if np.isfinite(scale)
             else np.zeros(v.size, np.uint8))  # v / scale: one fp32 division, as the reference
    counts, offsets = _pack_indices(indices.reshape(-1).long().numpy(), checks.packed_blocks(numel, block), block)
    return (torch.from_numpy(codes), torch.tensor([scale], dtype=torch.float32), torch.from_numpy(counts),
            torch.from_numpy(offsets))


TILE_FLOATS = 1 << 13  # packed_accumulate's tile of out (32 KB), as the compiled kernel's kTileFloats


def packed_accumulate(out: Tensor, codes: list[Tensor], scales: list[Tensor], counts: list[Tensor],
                      offsets: list[Tensor], block: int, exponent: int, mantissa: int, bias: int,
                      alpha: float = 1.0) -> None:
    checks.packed_accumulate(out, codes, scales, counts, offsets, block, exponent, mantissa, bias)
    if not codes:
        return
    tables = np.stack([_decode_table(exponent, mantissa, bias, np.float32(s.item())) for s in scales])
    entries = [c.numel() for c in codes]
    first = np.cumsum([0, *entries[:-1]]).astype(np.int64)
    _packed_add(out.view(-1).numpy(), np.concatenate([c.reshape(-1).numpy() for c in codes]),
                np.stack([n.reshape(-1).numpy() for n in counts]), np.concatenate([o.reshape(-1).numpy() for o in offsets]),
                first, block, tables, np.float32(alpha), max(1, TILE_FLOATS // block))


def adam_normalize(grad: Tensor, m: Tensor, v: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                   eps: float, share: float) -> tuple[Tensor, Tensor, Tensor]:
    checks.adam_normalize(grad, m, v, c1, c2, beta1, beta2, eps, share)
    return _adam(grad, m, v, None, c1, c2, beta1, beta2, eps, share)


def adam_momentum(grad: Tensor, m: Tensor, v: Tensor, u: Tensor, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
                  eps: float, share: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    checks.adam_momentum(grad, m, v, u, c1, c2, beta1, beta2, eps, share)
    return _adam(grad, m, v, u, c1, c2, beta1, beta2, eps, share)


def _adam(grad: Tensor, m: Tensor, v: Tensor, u: Tensor | None, c1: Tensor, c2: Tensor, beta1: float, beta2: float,
          eps: float, share: float) -> tuple[Tensor, ...]:
    """Both ops on checked arguments: (m', v', d), or with u (m', v', u', u^)."""
    constants = np.array([beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, share, 1.0 - share], dtype=np.float32)
    momentum = np.empty(0, np.float32) if u is None else u.view(-1).numpy()
    outs = _adam_loop(_f32(grad), m.view(-1).numpy(), v.view(-1).numpy(), momentum, c1.numpy(), c2.numpy(),
                      constants, share < 1.0, u is not None)
    return tuple(torch.from_numpy(t) for t in (outs if u is not None else outs[:3]))


# -- kernels ----------------------------------------------------------------------------------


@numba.njit(cache=True)
def _digit_threshold(keys: np.ndarray, k: int) -> tuple[np.uint32, np.int64]:
    """The k-th largest key T and how many keys equal to T are taken."""
    threshold = np.uint32(0)
    prefix_mask = np.uint32(0)
    needed = np.int64(k)
    for shift, bits in ((21, 11), (10, 11), (0, 10)):
        digit_mask = np.uint32((1 << bits) - 1)
        hist = np.zeros(1 << bits, np.int64)
        for key in keys:
            if (key & prefix_mask) == threshold:
                hist[(key >> np.uint32(shift)) & digit_mask] += 1
        digit = (1 << bits) - 1
        while hist[digit] < needed:
            needed -= hist[digit]
            digit -= 1
        threshold |= np.uint32(digit) << np.uint32(shift)
        prefix_mask |= digit_mask << np.uint32(shift)
    return threshold, needed


@numba.njit(cache=True)
def _topk_abs(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = x.size
    indices = np.empty(k, np.int64)
    if k == 0:
        return x[:0].copy(), indices
    keys = np.minimum(x.view(np.uint32) & np.uint32(0x7FFFFFFF), np.uint32(0x7F800001))  # one key for every NaN
    threshold, ties = _digit_threshold(keys, k)
    j = 0
    for i in range(n):
        key = keys[i]
        if key > threshold or (key == threshold and ties > 0):
            if key == threshold:
                ties -= 1
            indices[j] = i
            j += 1
    return x[indices], indices


@numba.njit(cache=True)
def _ef21_topk_step(grad: np.ndarray, h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    values, indices = _topk_abs(grad - h, k)
    for j in range(k):
        h[indices[j]] += values[j]
    return values, indices


@numba.njit(cache=True)
def _sparse_accumulate(out: np.ndarray, values: np.ndarray, indices: np.ndarray, alpha: np.float32) -> None:
    for j in range(indices.size):
        out[indices[j]] += alpha * values[j]


# -- float conversion (see reference.float_encode) ------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(cache=True)
def _splitmix64(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def _float_encode(x: np.ndarray, exponent: int, mantissa: int, bias: int, seed: int) -> np.ndarray:
    """Codes of the finite x (already divided by the scale, fp32)."""
    n = x.size
    out = np.empty(n, np.uint8)
    bits_all = x.view(np.uint32)
    max_magnitude = (1 << (exponent + mantissa)) - 1
    for i in range(n):
        bits = np.int64(bits_all[i])
        field = (bits >> 23) & 0xFF
        a = (bits & 0x7FFFFF) | (0x800000 if field > 0 else 0)
        e = (field - 127 if field > 0 else -126) + bias
        s = min(23 - mantissa + max(1 - e, 0), 40)
        q, r = a >> s, a & ((np.int64(1) << s) - 1)
        if seed < 0:
            half = np.int64(1) << (s - 1)
            if r > half or (r == half and (q & 1) == 1):
                q += 1
        else:
            noise = _splitmix64(np.uint64(seed) + np.uint64(i + 1) * _GOLDEN)
            if np.int64(noise & np.uint64((np.int64(1) << s) - 1)) < r:
                q += 1
        magnitude = min((max(e - 1, 0) << mantissa) + q, max_magnitude)
        out[i] = ((bits >> 31) << (exponent + mantissa)) | magnitude if magnitude > 0 else 0
    return out


@numba.njit(cache=True)
def _decode_table(exponent: int, mantissa: int, bias: int, scale: np.float32) -> np.ndarray:
    """The fp32 value of each of the 256 codes, times ``scale``."""
    table = np.empty(256, np.float32)
    for c in range(256):
        magnitude = c & ((1 << (exponent + mantissa)) - 1)
        e, m = magnitude >> mantissa, magnitude & ((1 << mantissa) - 1)
        value = np.float32(np.ldexp(np.float64(m + (1 << mantissa) if e > 0 else m), max(e, 1) - bias - mantissa))
        table[c] = (-value if (c >> (exponent + mantissa)) & 1 else value) * scale
    return table


@numba.njit(cache=True)
def _float_decode(codes: np.ndarray, exponent: int, mantissa: int, bias: int, scale: np.float32) -> np.ndarray:
    table = _decode_table(exponent, mantissa, bias, scale)
    out = np.empty(codes.size, np.float32)
    for i in range(codes.size):
        out[i] = table[codes[i]]
    return out


@numba.njit(cache=True)
def _float_accumulate(out: np.ndarray, codes: np.ndarray, table: np.ndarray) -> None:
    for i in range(codes.size):
        out[i] += table[codes[i]]


# -- Huffman coding (see reference.huffman_encode) -------------------------------------------
@numba.njit(cache=True)
def _huffman_encode(symbols: np.ndarray, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The stream of symbols that all have codewords."""
    total = 0
    for s in symbols:
        total += lengths[s]
    out = np.zeros((total + 7) // 8, np.uint8)
    acc, bits, pos = np.uint64(0), 0, 0
    for s in symbols:
        acc = (acc << np.uint64(lengths[s])) | np.uint64(codes[s])
        bits += lengths[s]
        while bits >= 8:
            bits -= 8
            out[pos] = np.uint8((acc >> np.uint64(bits)) & np.uint64(0xFF))
            pos += 1
    if bits > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - bits)) & np.uint64(0xFF))
    return out


@numba.njit(cache=True)
def _huffman_decode(stream: np.ndarray, n: int, codes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, bool]:
    """The first n symbols, and False if the stream ran out or starts no codeword first."""
    lut = np.zeros(1 << 16, np.uint16)
    for s in range(codes.size):
        length = lengths[s]
        if length > 0:
            first = np.int64(codes[s]) << (16 - length)
            lut[first:first + (1 << (16 - length))] = (length << 8) | s
    out = np.empty(n, np.uint8)
    acc, bits, pos = np.uint64(0), 0, 0
    for i in range(n):
        while bits <= 56 and pos < stream.size:
            acc = (acc << np.uint64(8)) | np.uint64(stream[pos])
            bits += 8
            pos += 1
        if bits >= 16:
            peek = (acc >> np.uint64(bits - 16)) & np.uint64(0xFFFF)
        else:
            peek = (acc << np.uint64(16 - bits)) & np.uint64(0xFFFF)
        entry = lut[peek]
        length = entry >> 8
        if length == 0 or length > bits:
            return out, False
        out[i] = entry & 0xFF
        bits -= length
    return out, True


# -- rANS coding (see reference.rans_encode) -----------------------------------------------
@numba.njit(cache=True)
def _rans_encode(symbols: np.ndarray, freqs: np.ndarray, precision: int, states: int) -> np.ndarray:
    """The stream of symbols that all have nonzero frequencies, over ``states`` interleaved states."""
    starts = np.zeros(freqs.size, np.int64)
    for s in range(1, freqs.size):
        starts[s] = starts[s - 1] + freqs[s - 1]
    out = np.empty(2 * symbols.size + 4 * states, np.uint8)  # <= 2 bytes per symbol when precision <= 16
    pos = 0
    x = np.full(states, RANS_LOW, np.int64)
    for i in range(symbols.size - 1, -1, -1):
        j = i % states
        s = symbols[i]
        f = np.int64(freqs[s])
        while x[j] >= f << (31 - precision):
            out[pos] = x[j] & 0xFF
            pos += 1
            x[j] >>= 8
        x[j] = ((x[j] // f) << precision) + x[j] % f + starts[s]
    for j in range(states - 1, -1, -1):
        for b in range(3, -1, -1):
            out[pos] = (x[j] >> (8 * b)) & 0xFF
            pos += 1
    return out[:pos].copy()


@numba.njit(cache=True)
def _rans_decode(stream: np.ndarray, n: int, freqs: np.ndarray, precision: int, states: int
                 ) -> tuple[np.ndarray, bool]:
    """The n symbols, and False unless reading them (back to front) ends at the stream's start with the
    states back at RANS_LOW."""
    out = np.empty(n, np.uint8)
    starts = np.zeros(freqs.size, np.int64)
    symbol_of = np.empty(1 << precision, np.uint8)
    total = 0
    for s in range(freqs.size):
        starts[s] = total
        symbol_of[total:total + freqs[s]] = s
        total += freqs[s]
    if stream.size < 4 * states:
        return out, False
    x = np.zeros(states, np.int64)
    pos = stream.size
    for j in range(states):
        for b in range(4):
            pos -= 1
            x[j] |= np.int64(stream[pos]) << (8 * b)
        if x[j] < RANS_LOW or x[j] >= 1 << 31:
            return out, False
    mask = (1 << precision) - 1
    for i in range(n):
        j = i % states
        r = x[j] & mask
        s = symbol_of[r]
        x[j] = freqs[s] * (x[j] >> precision) + r - starts[s]
        while x[j] < RANS_LOW:
            if pos == 0:
                return out, False
            pos -= 1
            x[j] = (x[j] << 8) | stream[pos]
        out[i] = s
    for j in range(states):
        if x[j] != RANS_LOW:
            return out, False
    return out, pos == 0


@numba.njit(cache=True)
def _sign_encode(x: np.ndarray, block: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Signs packed eight to a byte (1 = negative) and each block's mean |x| (fp64 sum, rounded to fp32)."""
    d = x.size
    signs = np.zeros((d + 7) // 8, dtype=np.uint8)
    means = np.zeros(blocks, dtype=np.float32)
    for b in range(blocks):
        lo, hi = b * block, min(d, (b + 1) * block)
        total = 0.0
        for j in range(lo, hi):
            total += abs(np.float64(x[j]))
            if x[j] < 0:
                signs[j >> 3] |= np.uint8(1 << (j & 7))
        means[b] = np.float32(total / max(1, hi - lo))
    return signs, means


@numba.njit(cache=True)
def _sign_decode(signs: np.ndarray, scales: np.ndarray, numel: int, block: int) -> np.ndarray:
    out = np.empty(numel, dtype=np.float32)
    for j in range(numel):
        s = scales[j // block]
        out[j] = -s if (signs[j >> 3] >> (j & 7)) & 1 else s
    return out


@numba.njit(cache=True)
def _sign_subtract(v: np.ndarray, signs: np.ndarray, scales: np.ndarray, block: int, factor: np.float32) -> None:
    """v_j -= sign_j fp32(scale_b * factor) (sign_j = -1 where bit j is set); factor -alpha adds,
    exactly: negating is exact."""
    for j in range(v.size):
        s = scales[j // block] * factor
        v[j] -= -s if (signs[j >> 3] >> (j & 7)) & 1 else s


@numba.njit(cache=True)
def _adam_loop(g: np.ndarray, m: np.ndarray, v: np.ndarray, u: np.ndarray, c1: np.ndarray, c2: np.ndarray,
                    k: np.ndarray, mix: bool, momentum: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """k: fp32 beta1, 1 - beta1, beta2, 1 - beta2, eps, share, 1 - share (reference.adam_normalize);
    ``momentum``: also u' and u^ (reference.adam_momentum), returned as (m', v', u', u^), else
    (m', v', d, an empty array)."""
    n = g.size
    m_new, v_new, d = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    u_new = np.empty(n if momentum else 0, np.float32)
    per1, per2 = c1.size > 1, c2.size > 1
    for j in range(n):
        m_new[j] = m[j] * k[0] + g[j] * k[1]
        v_new[j] = v[j] * k[2] + (g[j] * g[j]) * k[3]
        w = v_new[j] * c2[j if per2 else 0]
        if mix:
            s = (m_new[j] * m_new[j]) * c1[j if per1 else 0]
            if np.isnan(w) or w < s:  # NaN if either is NaN (torch.minimum)
                s = w
            w = w * k[5] + s * k[6]
        den = np.sqrt(w) + k[4]
        d[j] = np.float32(0.0) if den == 0 else g[j] / den
        if momentum:
            u_new[j] = u[j] * k[0] + d[j] * k[1]
            d[j] = u_new[j] * np.sqrt(c1[j if per1 else 0])
    if momentum:
        return m_new, v_new, u_new, d
    return m_new, v_new, d, u_new


# -- float64 sums in a fixed order (see reference) ----------------------------------------------
@numba.njit(cache=True)
def _fold_lanes(acc: np.ndarray, totals: np.ndarray) -> None:
    """totals[j] += a block's lanes acc[j, 0] + acc[j, 1] + ... summed left to right (the reference's order)."""
    for j in range(totals.size):
        block_sum = acc[j, 0]
        for lane in range(1, acc.shape[1]):
            block_sum += acc[j, lane]
        totals[j] += block_sum


@numba.njit(cache=True)
def _ordered_sums(x: np.ndarray, o: np.ndarray, distance: bool, block: int, lanes: int) -> np.ndarray:
    """distance: [||x - o||^2]; else x's [#non-zero, sum |x_i|, sum x_i^2] (o unused)."""
    k = 1 if distance else 3
    totals = np.zeros(k, np.float64)
    acc = np.empty((k, lanes), np.float64)
    for lo in range(0, max(x.size, 1), block):
        acc[:] = 0.0
        for i in range(lo, min(lo + block, x.size)):
            lane = (i - lo) % lanes
            if distance:
                d = np.float64(x[i] - o[i])  # one fp32 subtraction; its square is exact in float64
                acc[0, lane] += d * d
            else:
                v = np.float64(x[i])
                acc[0, lane] += 1.0 if v != 0.0 else 0.0
                acc[1, lane] += abs(v)
                acc[2, lane] += v * v
        _fold_lanes(acc, totals)
    return totals


@numba.njit(cache=True)
def _momentum_compensate(g: np.ndarray, u: np.ndarray, e: np.ndarray, u_new: np.ndarray, v: np.ndarray,
                         beta: np.float32, gain: np.float32, carry: np.float32, block: int, lanes: int) -> np.ndarray:
    """u_new = beta u + gain g, v = carry e + u_new (fp32); [sum g^2, sum u g] in ``_ordered_sums``' order."""
    totals = np.zeros(2, np.float64)
    acc = np.empty((2, lanes), np.float64)
    for lo in range(0, max(g.size, 1), block):
        acc[:] = 0.0
        for i in range(lo, min(lo + block, g.size)):
            momentum = beta * u[i] + gain * g[i]
            u_new[i] = momentum
            v[i] = carry * e[i] + momentum
            lane = (i - lo) % lanes
            x = np.float64(g[i])
            acc[0, lane] += x * x
            acc[1, lane] += np.float64(u[i]) * x
        _fold_lanes(acc, totals)
    return totals


# -- Top-K packed in 16 bits an entry (see reference.packed_encode) -----------------------------
@numba.njit(cache=True)
def _pack_indices(indices: np.ndarray, blocks: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.zeros(blocks, np.uint8)
    offsets = np.empty(indices.size, np.uint8)
    for j in range(indices.size):
        b = indices[j] // block
        counts[b] += 1
        offsets[j] = indices[j] - b * block
    return counts, offsets


@numba.njit(cache=True)
def _packed_add(out: np.ndarray, codes: np.ndarray, counts: np.ndarray, offsets: np.ndarray, first: np.ndarray,
                block: int, tables: np.ndarray, alpha: np.float32, tile: int) -> None:
    """out[b block + offsets_j] += alpha tables[r, codes_j] for payload r's entry j in block b: the
    payloads' entries concatenated (payload r's from first[r] on, counts[r, b] in block b), tile by
    tile of ``tile`` blocks, the payloads in rank order in each (every coordinate sums in rank
    order, as the compiled kernel's tiles)."""
    j = first.copy()
    blocks = counts.shape[1]
    for lo in range(0, blocks, tile):
        hi = min(blocks, lo + tile)
        for r in range(counts.shape[0]):
            k = j[r]
            for b in range(lo, hi):
                base = b * block
                for _ in range(counts[r, b]):
                    out[base + offsets[k]] += alpha * tables[r, codes[k]]
                    k += 1
            j[r] = k
