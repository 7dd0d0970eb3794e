// CPU kernels of rans_encode/decode: byte-wise rANS (Duda 2013) with two interleaved 32-bit
// states, the coder of CO3's float codes at their entropy. The specification (stream layout,
// arithmetic, errors) is compressors/kernels/reference.py.
//
// The encoder divides by a symbol's frequency with a multiply by a precomputed reciprocal
// (Giesen's ryg_rans, exact for states below 2^31); the decoder finds a slot's symbol in a
// 2^precision-byte table and the symbol's frequency and start in a 256-entry one. Each state
// depends only on every other symbol, so the two chains overlap in the pipeline.
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
constexpr int kRansStates = 2;           // symbol i uses state i mod 2
constexpr uint32_t kMissing = ~0u;       // x_max of a symbol without frequency: never reached, flags it

// x -> floor(x / f) 2^p + (x mod f) + c as x + bias + q (2^p - f) with q = floor(x / f) from a
// reciprocal: q = (x rcp) >> shift (shift >= 32), or q = x - 1 (rcp = 2^32 - 1, shift 32) when f = 1.
struct EncodeSymbol {
  uint32_t x_max;  // renormalise (emit bytes) while x >= x_max = 2^(31 - p) f; kMissing when f = 0
  uint32_t rcp;
  uint32_t bias;
  uint32_t complement;  // 2^p - f
  uint32_t shift;  // 32 + the reciprocal's extra shift
};

std::array<EncodeSymbol, 256> encode_table(const at::Tensor& freqs, int precision) {
  std::array<EncodeSymbol, 256> table;
  table.fill({kMissing, 0, 0, 0, 0});
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
// k = [x >= x_max] + [x >= 256 x_max] <= 2 bytes by storing x's low two bytes and advancing k.
// The state's chain is kept short: the three candidate shifts of x are formed at once and
// selected, the quotient takes one 64-bit shift, and x + bias is added beside the multiply.
inline void encode_one(uint32_t& x, const EncodeSymbol& e, uint8_t*& ptr, bool& missing) {
  missing |= e.x_max == kMissing;
  const bool one = x >= e.x_max, two = (x >> 8) >= e.x_max;
  const uint16_t low = htole16(uint16_t(x));
  std::memcpy(ptr, &low, sizeof(low));
  ptr += uint32_t(one) + uint32_t(two);
  const uint32_t kept = two ? x >> 16 : one ? x >> 8 : x;
  const uint32_t q = uint32_t((uint64_t(kept) * e.rcp) >> e.shift);
  x = (kept + e.bias) + q * e.complement;
}

at::Tensor rans_encode_cpu(const at::Tensor& symbols, const at::Tensor& freqs) {
  const int precision = check_rans_encode(symbols, freqs);
  const at::Tensor input = symbols.contiguous();
  const std::array<EncodeSymbol, 256> table = encode_table(freqs, precision);
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  const int64_t n = input.numel();
  // Room for the longest stream (<= 2 bytes per symbol when p <= 16); only written pages are touched.
  at::Tensor out = at::empty({2 * n + 4 * kRansStates}, input.options());
  uint8_t* const begin = out.mutable_data_ptr<uint8_t>();
  uint8_t* ptr = begin;
  uint32_t x0 = kRansLow, x1 = kRansLow;
  bool missing = false;
  int64_t i = n;
  if (i & 1) {
    --i;
    encode_one(x0, table[src[i]], ptr, missing);
  }
  for (; i > 0; i -= 2) {
    encode_one(x1, table[src[i - 1]], ptr, missing);
    encode_one(x0, table[src[i - 2]], ptr, missing);
  }
  TORCH_CHECK_VALUE(!missing, kNoFrequencyMessage);
  for (const uint32_t x : {x1, x0}) {
    for (int b = 3; b >= 0; --b) *ptr++ = uint8_t(x >> (8 * b));
  }
  return out.narrow(0, 0, ptr - begin);
}

// The decoder's per-symbol entry: frequency and start.
struct DecodeSymbol {
  uint32_t freq;
  uint32_t start;
};

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
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  const int64_t size = input.numel();
  at::Tensor out = at::empty({n}, input.options());
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  TORCH_CHECK_VALUE(size >= 4 * kRansStates, kRansCorruptStreamMessage);
  // Read back to front: the states, then the bytes last emitted first.
  const uint8_t* ptr = src + size;
  uint32_t x[kRansStates];
  for (int j = 0; j < kRansStates; ++j) {
    x[j] = 0;
    for (int b = 0; b < 4; ++b) x[j] |= uint32_t(*--ptr) << (8 * b);
    TORCH_CHECK_VALUE(x[j] >= kRansLow && x[j] < (1u << 31), kRansCorruptStreamMessage);
  }
  const uint32_t mask = (1u << precision) - 1;
  auto step = [&](uint32_t& state) -> uint8_t {
    const uint32_t r = state & mask;
    const uint8_t s = symbol_of[r];
    state = table[s].freq * (state >> precision) + r - table[s].start;
    return s;
  };
  int64_t i = 0;
  // Fast path: a pair of symbols reads at most 4 bytes. A state needs k = [x < L] + [x < L / 256]
  // bytes (x >= 2^(23 - p) >= 2^7 after a step), read without branches from the two bytes before ptr.
  auto refill = [&](uint32_t& state) {
    const uint32_t k = uint32_t(state < kRansLow) + uint32_t(state < (kRansLow >> 8));
    uint16_t two;  // ptr[-1] << 8 | ptr[-2]: the next byte read, then the one after it
    std::memcpy(&two, ptr - 2, sizeof(two));
    state = uint32_t((uint64_t(state) << (8 * k)) | (uint32_t(le16toh(two)) >> (16 - 8 * k)));
    ptr -= k;
  };
  for (; i + 2 <= n && ptr - src >= 4; i += 2) {
    dst[i] = step(x[0]);
    refill(x[0]);
    dst[i + 1] = step(x[1]);
    refill(x[1]);
  }
  for (; i < n; ++i) {
    uint32_t& state = x[i & 1];
    dst[i] = step(state);
    while (state < kRansLow) {
      TORCH_CHECK_VALUE(ptr != src, kRansCorruptStreamMessage);
      state = (state << 8) | *--ptr;
    }
  }
  TORCH_CHECK_VALUE(ptr == src && x[0] == kRansLow && x[1] == kRansLow, kRansCorruptStreamMessage);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("rans_encode", &rans_encode_cpu);
  m.impl("rans_decode", &rans_decode_cpu);
}

}  // namespace threepc
