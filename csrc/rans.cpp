// CPU kernels of rans_encode/decode: byte-wise rANS (Duda 2013) with 2 interleaved 32-bit states,
// or 4 for messages of kRansWide symbols or more, the coder of CO3's float codes at their entropy.
// The specification (stream layout, arithmetic, errors) is compressors/kernels/reference.py.
//
// The encoder divides by a symbol's frequency with a multiply by a precomputed reciprocal
// (Giesen's ryg_rans, exact for states below 2^31); the decoder finds a slot's symbol in a
// 2^precision-byte table and the symbol's frequency and start in a 256-entry one. Each state
// depends only on every k-th symbol, so the k chains overlap in the pipeline.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include <endian.h>

#include "op_checks.h"

namespace threepc {
namespace {

constexpr uint32_t kRansLow = 1u << 23;  // states lie in [kRansLow, 2^31)
constexpr int64_t kRansWide = 1 << 16;   // messages this long or longer use 4 states (checks.rans_states)
constexpr uint32_t kMissing = 64;        // the shift of a symbol without frequency: no valid shift has bit 6

// x -> floor(x / f) 2^p + (x mod f) + c as x + bias + q (2^p - f) with q = floor(x / f) from a
// reciprocal: q = (x rcp) >> shift (shift >= 32), or q = x - 1 (rcp = 2^32 - 1, shift 32) when f = 1.
struct EncodeSymbol {
  uint32_t x_max;  // renormalise (emit bytes) while x >= x_max = 2^(31 - p) f
  uint32_t rcp;
  uint32_t bias;
  uint32_t complement;  // 2^p - f
  uint32_t shift;  // 32 + the reciprocal's extra shift (<= 47); kMissing when f = 0
};

std::array<EncodeSymbol, 256> encode_table(const at::Tensor& freqs, int precision) {
  std::array<EncodeSymbol, 256> table;
  table.fill({~0u, 0, 0, 0, kMissing});
  const at::Tensor freq_t = freqs.contiguous();
  const int32_t* f = freq_t.const_data_ptr<int32_t>();
  uint32_t start = 0;
  for (int64_t s = 0; s < freqs.numel(); ++s) {
    const uint32_t freq = uint32_t(f[s]);
    if (freq == 0) continue;
    EncodeSymbol& e = table[s];
    e.x_max = freq << (31 - precision);
    e.complement = (1u << precision) - freq;
    if (freq == 1) {
      e.rcp = ~0u;
      e.shift = 32;
      e.bias = start + (1u << precision) - 1;
    } else {
      uint32_t shift = 0;
      while (freq > (1u << shift)) ++shift;
      e.rcp = uint32_t(((uint64_t(1) << (shift + 31)) + freq - 1) / freq);
      e.shift = 32 + shift - 1;
      e.bias = start;
    }
    start += freq;
  }
  return table;
}

// Renormalisation without branches (they would be mispredicted about every other symbol): emit
// k = [x >= x_max] + [x >= 256 x_max] <= 2 bytes by storing x's low two bytes and advancing k, and
// keep x >> 8k. With 4 states the loop is bound by its operation count, so the shift is one shift
// by 8k; with 2 it is bound by each state's chain, so the three candidate shifts of x are formed
// at once and selected. The symbols' shifts are OR-ed into `shifts`, which has bit 6 (kMissing)
// iff one had no frequency: one register operation a symbol, where a compare and a flag in
// memory cost 10%.
template <int S>
inline void encode_one(uint32_t& x, const EncodeSymbol& e, uint8_t*& ptr, uint32_t& shifts) {
  shifts |= e.shift;
  const bool one = x >= e.x_max, two = (x >> 8) >= e.x_max;
  const uint16_t low = htole16(uint16_t(x));
  std::memcpy(ptr, &low, sizeof(low));
  const uint32_t k = uint32_t(one) + uint32_t(two);
  ptr += k;
  const uint32_t kept = S >= 4 ? x >> (8 * k) : two ? x >> 16 : one ? x >> 8 : x;
  const uint32_t q = uint32_t((uint64_t(kept) * e.rcp) >> (e.shift & 63));
  x = (kept + e.bias) + q * e.complement;
}

// Symbols last to first, symbol i into state i mod S; then the states x_{S-1}, ..., x_0, big-endian.
// Not inlined: both instances inlined into rans_encode_cpu spill states in the loop (493 against 522 MB/s).
template <int S>
__attribute__((noinline)) int64_t encode_states(const uint8_t* src, int64_t n,
                                                const std::array<EncodeSymbol, 256>& table, uint8_t* begin,
                                                bool& missing) {
  uint8_t* ptr = begin;
  uint32_t shifts = 0;  // in a register, not behind `missing`, which the byte stores may alias
  uint32_t x[S];
  for (int j = 0; j < S; ++j) x[j] = kRansLow;
  // Every index into x is a constant once the loops over j unroll: the states stay in registers.
  const int64_t whole = n - n % S;  // the symbols past it go to states 0 .. n - whole - 1
  for (int j = S - 1; j >= 0; --j) {
    if (whole + j < n) encode_one<S>(x[j], table[src[whole + j]], ptr, shifts);
  }
  for (int64_t i = whole; i > 0; i -= S) {
    for (int j = S - 1; j >= 0; --j) encode_one<S>(x[j], table[src[i - S + j]], ptr, shifts);
  }
  for (int j = S - 1; j >= 0; --j) {
    for (int b = 3; b >= 0; --b) *ptr++ = uint8_t(x[j] >> (8 * b));
  }
  missing = (shifts & kMissing) != 0;
  return ptr - begin;
}

at::Tensor rans_encode_cpu(const at::Tensor& symbols, const at::Tensor& freqs) {
  const int precision = check_rans_encode(symbols, freqs);
  const at::Tensor input = symbols.contiguous();
  const std::array<EncodeSymbol, 256> table = encode_table(freqs, precision);
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  const int64_t n = input.numel();
  // Room for the longest stream (<= 2 bytes per symbol when p <= 16); only written pages are touched.
  at::Tensor out = at::empty({2 * n + 4 * 4}, input.options());
  uint8_t* const begin = out.mutable_data_ptr<uint8_t>();
  bool missing = false;
  const int64_t size = n >= kRansWide ? encode_states<4>(src, n, table, begin, missing)
                                      : encode_states<2>(src, n, table, begin, missing);
  TORCH_CHECK_VALUE(!missing, kNoFrequencyMessage);
  return out.narrow(0, 0, size);
}

// The decoder's per-symbol entry: frequency and start.
struct DecodeSymbol {
  uint32_t freq;
  uint32_t start;
};

// The n symbols into dst, read back to front over S states; false unless that ends at the
// stream's first byte with every state back at kRansLow (a corrupt stream or a wrong n).
template <int S>
bool decode_states(const uint8_t* src, int64_t size, int64_t n, int precision, const std::vector<uint8_t>& symbol_of,
                   const std::array<DecodeSymbol, 256>& table, uint8_t* dst) {
  if (size < 4 * S) return false;
  // Read back to front: the states, then the bytes last emitted first.
  const uint8_t* ptr = src + size;
  uint32_t x[S];
  for (int j = 0; j < S; ++j) {
    x[j] = 0;
    for (int b = 0; b < 4; ++b) x[j] |= uint32_t(*--ptr) << (8 * b);
    if (x[j] < kRansLow || x[j] >= (1u << 31)) return false;
  }
  const uint32_t mask = (1u << precision) - 1;
  auto step = [&](uint32_t& state) -> uint8_t {
    const uint32_t r = state & mask;
    const uint8_t s = symbol_of[r];
    state = table[s].freq * (state >> precision) + r - table[s].start;
    return s;
  };
  // Fast path: S symbols read at most 2 S bytes. A state needs k = [x < L] + [x < L / 256] bytes
  // (x >= 2^(23 - p) >= 2^7 after a step), read without branches from the two bytes before ptr.
  auto refill = [&](uint32_t& state) {
    const uint32_t k = uint32_t(state < kRansLow) + uint32_t(state < (kRansLow >> 8));
    uint16_t two;  // ptr[-1] << 8 | ptr[-2]: the next byte read, then the one after it
    std::memcpy(&two, ptr - 2, sizeof(two));
    state = uint32_t((uint64_t(state) << (8 * k)) | (uint32_t(le16toh(two)) >> (16 - 8 * k)));
    ptr -= k;
  };
  int64_t i = 0;
  for (; i + S <= n && ptr - src >= 2 * S; i += S) {
    for (int j = 0; j < S; ++j) {
      dst[i + j] = step(x[j]);
      refill(x[j]);
    }
  }
  for (; i < n; i += S) {  // the last symbols, near the stream's start (i is a multiple of S)
    for (int j = 0; j < S && i + j < n; ++j) {
      dst[i + j] = step(x[j]);
      while (x[j] < kRansLow) {
        if (ptr == src) return false;
        x[j] = (x[j] << 8) | *--ptr;
      }
    }
  }
  bool back = ptr == src;
  for (int j = 0; j < S; ++j) back = back && x[j] == kRansLow;
  return back;
}

at::Tensor rans_decode_cpu(const at::Tensor& stream, int64_t n, const at::Tensor& freqs) {
  const int precision = check_rans_decode(stream, n, freqs);
  const at::Tensor freq_t = freqs.contiguous();
  const int32_t* f = freq_t.const_data_ptr<int32_t>();
  std::array<DecodeSymbol, 256> table{};
  std::vector<uint8_t> symbol_of(size_t(1) << precision);
  uint32_t start = 0;
  for (int64_t s = 0; s < freqs.numel(); ++s) {
    table[s] = {uint32_t(f[s]), start};
    std::memset(symbol_of.data() + start, int(s), size_t(f[s]));
    start += uint32_t(f[s]);
  }
  const at::Tensor input = stream.contiguous();
  at::Tensor out = at::empty({n}, input.options());
  const bool complete = n >= kRansWide
      ? decode_states<4>(input.const_data_ptr<uint8_t>(), input.numel(), n, precision, symbol_of, table,
                         out.mutable_data_ptr<uint8_t>())
      : decode_states<2>(input.const_data_ptr<uint8_t>(), input.numel(), n, precision, symbol_of, table,
                         out.mutable_data_ptr<uint8_t>());
  TORCH_CHECK_VALUE(complete, kRansCorruptStreamMessage);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("rans_encode", &rans_encode_cpu);
  m.impl("rans_decode", &rans_decode_cpu);
}

}  // namespace threepc
