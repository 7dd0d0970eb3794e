// CPU kernels of CO3's codecs: float_encode/decode (low-precision float
// conversion) and huffman_encode/decode (canonical prefix codes, <= 16 bits).
// The specification is compressors/kernels/reference.py.
//
// float_encode works on the fp32 bit pattern of x = v / scale: with the 24-bit
// significand a and the target exponent field E, the code magnitude is
// max(E - 1, 0) << m plus a >> s rounded (s = 23 - m + max(1 - E, 0)), then
// saturated. Round to nearest keeps everything in 32-bit lanes (a shift of 25
// or more rounds to 0 either way) so the loop vectorises; stochastic rounding
// compares the dropped bits with splitmix64 bits in 64-bit lanes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace threepc {
namespace {

constexpr int64_t kGrain = 1 << 15;
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr int kShiftCap = 40;  // as reference.py
constexpr int kMaxCodeLength = 16;

struct FloatFormat {
  int exponent, mantissa, bias;
  float scale;
  uint32_t max_magnitude() const { return (1u << (exponent + mantissa)) - 1; }
};

void check_format(int64_t exponent, int64_t mantissa, int64_t bias, double scale) {
  TORCH_CHECK(exponent >= 1 && mantissa >= 0 && exponent + mantissa <= 7,
              "float format [1, ", exponent, ", ", mantissa, "] needs exponent >= 1, mantissa >= 0 and "
              "exponent + mantissa <= 7 (codes fit in one byte)");
  TORCH_CHECK(bias >= -64 && bias <= 64, "float format bias must lie in [-64, 64], got ", bias);
  TORCH_CHECK(scale > 0 && std::isfinite(scale), "float format scale must be positive and finite, got ", scale);
}

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__attribute__((always_inline)) inline uint32_t float_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

// Round to nearest, ties to even: all lanes 32-bit, no branches.
__attribute__((always_inline)) inline uint8_t encode_nearest(float x, const FloatFormat& f) {
  const uint32_t bits = float_bits(x);
  const uint32_t field = (bits >> 23) & 0xFFu;
  const uint32_t a = (bits & 0x7FFFFFu) | (field ? 0x800000u : 0u);
  const int32_t e = (field ? int32_t(field) - 127 : -126) + f.bias;
  const int32_t s = std::min(23 - f.mantissa + std::max(1 - e, 0), 25);
  const uint32_t q = a >> s;
  const uint32_t r = a & ((1u << s) - 1u);
  const uint32_t half = 1u << (s - 1);
  const uint32_t up = (r > half) | ((r == half) & q);
  const uint32_t magnitude = std::min((uint32_t(std::max(e - 1, 0)) << f.mantissa) + q + (up & 1u), f.max_magnitude());
  const uint32_t sign = (bits >> 31) << (f.exponent + f.mantissa);
  return uint8_t(magnitude ? (sign | magnitude) : 0u);
}

inline uint8_t encode_stochastic(float x, uint64_t noise, const FloatFormat& f) {
  const uint32_t bits = float_bits(x);
  const uint32_t field = (bits >> 23) & 0xFFu;
  const uint64_t a = (bits & 0x7FFFFFu) | (field ? 0x800000u : 0u);
  const int32_t e = (field ? int32_t(field) - 127 : -126) + f.bias;
  const int32_t s = std::min(23 - f.mantissa + std::max(1 - e, 0), kShiftCap);
  const uint64_t mask = (uint64_t(1) << s) - 1;
  const uint64_t q = (a >> s) + ((noise & mask) < (a & mask) ? 1 : 0);
  const uint64_t magnitude = std::min<uint64_t>((uint64_t(std::max(e - 1, 0)) << f.mantissa) + q, f.max_magnitude());
  const uint32_t sign = (bits >> 31) << (f.exponent + f.mantissa);
  return uint8_t(magnitude ? (sign | uint32_t(magnitude)) : 0u);
}

// Round to nearest over fp32 input, compiled for AVX2 so that the per-lane variable shifts
// vectorise (8 values per instruction); the same arithmetic as encode_nearest.
#if defined(__x86_64__)
__attribute__((target("avx2"))) uint32_t encode_nearest_avx2(const float* v, uint8_t* out, int64_t begin,
                                                             int64_t end, FloatFormat f) {
  uint32_t non_finite = 0;
  for (int64_t i = begin; i < end; ++i) {
    const float x = v[i] / f.scale;
    non_finite |= uint32_t((float_bits(x) & 0x7F800000u) == 0x7F800000u);
    out[i] = encode_nearest(x, f);
  }
  return non_finite;
}
#endif

template <typename scalar_t>
bool encode_range(const scalar_t* v, uint8_t* out, int64_t begin, int64_t end, const FloatFormat& f, int64_t seed) {
  uint32_t non_finite = 0;
#if defined(__x86_64__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    static const bool has_avx2 = __builtin_cpu_supports("avx2");
    if (seed < 0 && has_avx2) return encode_nearest_avx2(v, out, begin, end, f) != 0;
  }
#endif
  if (seed < 0) {
    for (int64_t i = begin; i < end; ++i) {
      const float x = static_cast<float>(v[i]) / f.scale;
      non_finite |= uint32_t((float_bits(x) & 0x7F800000u) == 0x7F800000u);
      out[i] = encode_nearest(x, f);
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      const float x = static_cast<float>(v[i]) / f.scale;
      non_finite |= uint32_t((float_bits(x) & 0x7F800000u) == 0x7F800000u);
      out[i] = encode_stochastic(x, splitmix64(uint64_t(seed) + uint64_t(i + 1) * kGolden), f);
    }
  }
  return non_finite != 0;
}

at::Tensor float_encode_cpu(const at::Tensor& v, int64_t exponent, int64_t mantissa, int64_t bias, double scale,
                            int64_t seed) {
  check_format(exponent, mantissa, bias, scale);
  const at::Tensor input = v.contiguous();
  at::Tensor codes = at::empty({input.numel()}, input.options().dtype(at::kByte));
  const FloatFormat f{int(exponent), int(mantissa), int(bias), float(scale)};
  std::atomic<bool> non_finite{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "float_encode", [&] {
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    uint8_t* dst = codes.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, input.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (encode_range(src, dst, begin, end, f, seed)) non_finite = true;
    });
  });
  TORCH_CHECK_VALUE(!non_finite, "float_encode got NaN or Inf values; the float formats have no codes for them. "
                    "Check the gradients (loss scaling, a diverged step) before compressing");
  return codes;
}

at::Tensor float_decode_cpu(const at::Tensor& codes, int64_t exponent, int64_t mantissa, int64_t bias, double scale) {
  check_format(exponent, mantissa, bias, scale);
  TORCH_CHECK(codes.scalar_type() == at::kByte, "float_decode takes uint8 codes, got ", codes.scalar_type());
  const at::Tensor input = codes.contiguous();
  std::array<float, 256> table{};
  for (int c = 0; c < 256; ++c) {
    const int magnitude = c & ((1 << (exponent + mantissa)) - 1);
    const int e = magnitude >> mantissa, m = magnitude & ((1 << mantissa) - 1);
    const float value = std::ldexp(float(e ? m + (1 << mantissa) : m), int(std::max(e, 1) - bias - mantissa));
    table[c] = ((c >> (exponent + mantissa)) & 1 ? -value : value) * float(scale);
  }
  at::Tensor out = at::empty({input.numel()}, input.options().dtype(at::kFloat));
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, input.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dst[i] = table[src[i]];
  });
  return out;
}

// -- Huffman --------------------------------------------------------------------------------
void check_table(const at::Tensor& codes, const at::Tensor& lengths) {
  TORCH_CHECK(codes.scalar_type() == at::kInt && lengths.scalar_type() == at::kByte && codes.dim() == 1 &&
                  codes.sizes() == lengths.sizes() && codes.numel() <= 256,
              "a Huffman table is (codes int32[A], lengths uint8[A]) with A <= 256 symbols");
}

at::Tensor huffman_encode_cpu(const at::Tensor& symbols, const at::Tensor& codes, const at::Tensor& lengths) {
  check_table(codes, lengths);
  TORCH_CHECK(symbols.scalar_type() == at::kByte, "huffman_encode takes uint8 symbols, got ", symbols.scalar_type());
  const at::Tensor input = symbols.contiguous();
  const at::Tensor code_t = codes.contiguous(), length_t = lengths.contiguous();
  std::array<uint32_t, 256> code{};
  std::array<uint32_t, 256> length{};
  for (int64_t s = 0; s < codes.numel(); ++s) {
    code[s] = uint32_t(code_t.const_data_ptr<int32_t>()[s]);
    length[s] = length_t.const_data_ptr<uint8_t>()[s];
    TORCH_CHECK(length[s] <= kMaxCodeLength, "Huffman codewords are at most 16 bits, symbol ", s, " has ", length[s]);
  }
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  const int64_t n = input.numel();
  int64_t total_bits = 0;
  bool missing = false;
  for (int64_t i = 0; i < n; ++i) {
    total_bits += length[src[i]];
    missing |= length[src[i]] == 0;
  }
  TORCH_CHECK_VALUE(!missing, "huffman_encode: a symbol has no codeword (length 0) in this table");
  const int64_t nbytes = (total_bits + 7) / 8;
  at::Tensor out = at::zeros({nbytes + 8}, input.options());  // slack for 4-byte stores
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  uint64_t acc = 0;
  int bits = 0;  // valid low bits in acc
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t s = src[i];
    acc = (acc << length[s]) | code[s];
    bits += int(length[s]);
    if (bits >= 32) {
      bits -= 32;
      const uint32_t word = uint32_t(acc >> bits);
      dst[0] = uint8_t(word >> 24);
      dst[1] = uint8_t(word >> 16);
      dst[2] = uint8_t(word >> 8);
      dst[3] = uint8_t(word);
      dst += 4;
    }
  }
  for (; bits > 0; bits -= 8) {
    *dst++ = uint8_t(bits >= 8 ? acc >> (bits - 8) : acc << (8 - bits));
  }
  return out.narrow(0, 0, nbytes);
}

at::Tensor huffman_decode_cpu(const at::Tensor& stream, int64_t n, const at::Tensor& codes, const at::Tensor& lengths) {
  check_table(codes, lengths);
  TORCH_CHECK(stream.scalar_type() == at::kByte, "huffman_decode takes a uint8 stream, got ", stream.scalar_type());
  TORCH_CHECK(n >= 0, "huffman_decode: n must be >= 0, got ", n);
  // 16-bit lookup: the symbol (low byte) and codeword length (high byte) of every 16-bit prefix.
  std::vector<uint16_t> lut(1 << kMaxCodeLength, 0);
  const int32_t* code = codes.contiguous().const_data_ptr<int32_t>();
  const at::Tensor length_t = lengths.contiguous();
  const uint8_t* length = length_t.const_data_ptr<uint8_t>();
  for (int64_t s = 0; s < codes.numel(); ++s) {
    const int l = length[s];
    if (l == 0) continue;
    TORCH_CHECK(l <= kMaxCodeLength && uint32_t(code[s]) < (1u << l), "invalid Huffman codeword for symbol ", s);
    const uint32_t first = uint32_t(code[s]) << (kMaxCodeLength - l);
    std::fill(lut.begin() + first, lut.begin() + first + (1u << (kMaxCodeLength - l)), uint16_t((l << 8) | s));
  }
  const at::Tensor input = stream.contiguous();
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  const int64_t nbytes = input.numel();
  at::Tensor out = at::empty({n}, input.options());
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  uint64_t acc = 0;
  int bits = 0;
  int64_t pos = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (bits < kMaxCodeLength) {
      while (bits <= 56 && pos < nbytes) {
        acc = (acc << 8) | src[pos++];
        bits += 8;
      }
    }
    const uint32_t peek = uint32_t(bits >= kMaxCodeLength ? acc >> (bits - kMaxCodeLength) : acc << (kMaxCodeLength - bits)) & 0xFFFFu;
    const uint16_t entry = lut[peek];
    const int l = entry >> 8;
    TORCH_CHECK_VALUE(l != 0 && l <= bits, "huffman_decode: the stream is corrupt or shorter than n symbols");
    dst[i] = uint8_t(entry);
    bits -= l;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("float_encode", &float_encode_cpu);
  m.impl("float_decode", &float_decode_cpu);
  m.impl("huffman_encode", &huffman_encode_cpu);
  m.impl("huffman_decode", &huffman_decode_cpu);
}

}  // namespace threepc
