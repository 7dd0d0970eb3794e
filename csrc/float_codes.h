// The float-conversion arithmetic shared by the CPU (csrc/codecs.cpp) and CUDA
// (csrc/cuda/kernels.cu) kernels, so that both give the same codes bit for bit.
// The specification is compressors/kernels/reference.py.
//
// float_encode works on the fp32 bit pattern of x = v / scale: with the 24-bit
// significand a and the target exponent field E, the code magnitude is
// max(E - 1, 0) << m plus a >> s rounded (s = 23 - m + max(1 - E, 0)), then
// saturated. Round to nearest keeps everything in 32-bit lanes (a shift of 25
// or more rounds to 0 either way) so a CPU loop vectorises; stochastic rounding
// compares the dropped bits with splitmix64 bits in 64-bit lanes.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define THREEPC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define THREEPC_HOST_DEVICE __attribute__((always_inline)) inline
#endif

namespace threepc {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr int kShiftCap = 40;  // as reference.py

struct FloatFormat {
  int exponent, mantissa, bias;
  float scale;
  THREEPC_HOST_DEVICE uint32_t max_magnitude() const { return (1u << (exponent + mantissa)) - 1; }
};

THREEPC_HOST_DEVICE uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The noise of element i under ``seed`` (stochastic rounding).
THREEPC_HOST_DEVICE uint64_t element_noise(int64_t seed, int64_t i) {
  return splitmix64(uint64_t(seed) + uint64_t(i + 1) * kGolden);
}

THREEPC_HOST_DEVICE uint32_t float_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

THREEPC_HOST_DEVICE int32_t min32(int32_t a, int32_t b) { return a < b ? a : b; }
THREEPC_HOST_DEVICE int32_t max32(int32_t a, int32_t b) { return a > b ? a : b; }

THREEPC_HOST_DEVICE bool non_finite(float x) { return (float_bits(x) & 0x7F800000u) == 0x7F800000u; }

// Round to nearest, ties to even: all lanes 32-bit, no branches.
THREEPC_HOST_DEVICE uint8_t encode_nearest(float x, const FloatFormat& f) {
  const uint32_t bits = float_bits(x);
  const uint32_t field = (bits >> 23) & 0xFFu;
  const uint32_t a = (bits & 0x7FFFFFu) | (field ? 0x800000u : 0u);
  const int32_t e = (field ? int32_t(field) - 127 : -126) + f.bias;
  const int32_t s = min32(23 - f.mantissa + max32(1 - e, 0), 25);
  const uint32_t q = a >> s;
  const uint32_t r = a & ((1u << s) - 1u);
  const uint32_t half = 1u << (s - 1);
  const uint32_t up = (r > half) | ((r == half) & q);
  const uint32_t unsaturated = (uint32_t(max32(e - 1, 0)) << f.mantissa) + q + (up & 1u);
  const uint32_t magnitude = unsaturated < f.max_magnitude() ? unsaturated : f.max_magnitude();
  const uint32_t sign = (bits >> 31) << (f.exponent + f.mantissa);
  return uint8_t(magnitude ? (sign | magnitude) : 0u);
}

THREEPC_HOST_DEVICE uint8_t encode_stochastic(float x, uint64_t noise, const FloatFormat& f) {
  const uint32_t bits = float_bits(x);
  const uint32_t field = (bits >> 23) & 0xFFu;
  const uint64_t a = (bits & 0x7FFFFFu) | (field ? 0x800000u : 0u);
  const int32_t e = (field ? int32_t(field) - 127 : -126) + f.bias;
  const int32_t s = min32(23 - f.mantissa + max32(1 - e, 0), kShiftCap);
  const uint64_t mask = (uint64_t(1) << s) - 1;
  const uint64_t q = (a >> s) + ((noise & mask) < (a & mask) ? 1 : 0);
  const uint64_t unsaturated = (uint64_t(max32(e - 1, 0)) << f.mantissa) + q;
  const uint64_t magnitude = unsaturated < f.max_magnitude() ? unsaturated : uint64_t(f.max_magnitude());
  const uint32_t sign = (bits >> 31) << (f.exponent + f.mantissa);
  return uint8_t(magnitude ? (sign | uint32_t(magnitude)) : 0u);
}

THREEPC_HOST_DEVICE float float_of_bits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

// The scale of a packed Top-K payload (reference.packed_scale): the least fp32 s with
// s * max_value >= top (in fp64, exact), at least 2^-149; 1 for top = 0; NaN for a non-finite top
// or when no finite fp32 is large enough.
THREEPC_HOST_DEVICE float packed_scale(float top, float max_value) {
  const float nan = float_of_bits(0x7FC00000u), inf = float_of_bits(0x7F800000u);
  if (non_finite(top)) return nan;
  if (top == 0.0f) return 1.0f;
  const double q = double(top) / double(max_value), least = 0x1p-149;
  if (q > double(float_of_bits(0x7F7FFFFFu))) return nan;  // beyond fp32's largest finite value
  float s = float(q > least ? q : least);
  if (double(s) * double(max_value) < double(top)) s = nextafterf(s, inf);
  return non_finite(s) ? nan : s;
}

// -- host side ----------------------------------------------------------------------------
// The fp32 value of every code, times scale (host side; the decoders look codes up in it).
inline std::array<float, 256> decode_table(int exponent, int mantissa, int bias, float scale) {
  std::array<float, 256> table{};
  for (int c = 0; c < 256; ++c) {
    const int magnitude = c & ((1 << (exponent + mantissa)) - 1);
    const int e = magnitude >> mantissa, m = magnitude & ((1 << mantissa) - 1);
    const float value = std::ldexp(float(e ? m + (1 << mantissa) : m), (e > 1 ? e : 1) - bias - mantissa);
    table[c] = ((c >> (exponent + mantissa)) & 1 ? -value : value) * scale;
  }
  return table;
}

// decode_table times alpha, each entry rounded to fp32: what float_accumulate adds per code.
inline std::array<float, 256> accumulate_table(int exponent, int mantissa, int bias, float scale, float alpha) {
  std::array<float, 256> table = decode_table(exponent, mantissa, bias, scale);
  for (float& value : table) value *= alpha;
  return table;
}

// The format's largest value (scale 1).
inline float max_value(int exponent, int mantissa, int bias) {
  return decode_table(exponent, mantissa, bias, 1.0f)[(1 << (exponent + mantissa)) - 1];
}

}  // namespace threepc
