// The scale arithmetic of the scaled sign, shared by the CPU (csrc/sign.cpp) and CUDA
// (csrc/cuda/kernels.cu) kernels so that both give the same bf16 bits. The specification is
// compressors/kernels/reference.py (sign_encode): a block's scale is its fp64 sum of |x_j|
// divided by its n_b entries in fp64, rounded to fp32, saturated to bf16's largest finite
// value, rounded to bf16 (ties to even); NaN becomes bf16's canonical NaN 0x7FC0 and inf stays.
#pragma once

#include <cstdint>
#include <cstring>

#include "float_codes.h"

namespace threepc {

constexpr uint32_t kBF16MaxBits = 0x7F7F0000u;  // bf16's largest finite value as fp32 bits

THREEPC_HOST_DEVICE uint16_t bf16_scale(double sum, int64_t count) {
  const float mean = static_cast<float>(sum / static_cast<double>(count));
  const uint32_t u = float_bits(mean);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;    // NaN
  if ((u & 0x7FFFFFFFu) == 0x7F800000u) return u >> 16;  // inf
  if (u > kBF16MaxBits && u < 0x80000000u) return kBF16MaxBits >> 16;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

THREEPC_HOST_DEVICE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

THREEPC_HOST_DEVICE float bf16_to_float(uint16_t bits) { return bits_to_float(static_cast<uint32_t>(bits) << 16); }

}  // namespace threepc
