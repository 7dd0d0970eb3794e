// CPU kernels of the scaled sign (compressors/operators/sign.py): sign_encode, sign_residual
// (the encode plus v -= C(v) in place, for error feedback) and sign_decode. Each thread takes a
// run of whole blocks and, block by block while the block is in cache, sums |v| (fp64), packs
// the signs of the bytes that start in the block, and writes the residual. The specification is
// compressors/kernels/reference.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "op_checks.h"
#include "sign_codes.h"

namespace threepc {
namespace {

constexpr int64_t kGrainEntries = 1 << 16;

int64_t sign_blocks(int64_t numel, int64_t block) { return std::max<int64_t>(1, (numel + block - 1) / block); }

// Blocks per task; a block that is not a whole number of bytes shares a sign byte with the next
// one, so then one thread takes every block (a residual must not change entries whose signs
// another thread still reads).
int64_t block_grain(int64_t block, int64_t blocks) {
  return block % 8 == 0 ? std::max<int64_t>(1, kGrainEntries / block) : blocks;
}

double abs_sum(const float* v, int64_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += std::fabs(static_cast<double>(v[j]));
  return sum;
}

uint8_t sign_byte(const float* v, int64_t n) {  // bit k set iff v[k] < 0, k < n <= 8
#if defined(__SSE2__)
  if (n == 8) {  // a whole byte: two 4-lane compares (false for -0 and NaN, as below) and their masks
    const __m128 zero = _mm_setzero_ps();
    const int low = _mm_movemask_ps(_mm_cmplt_ps(_mm_loadu_ps(v), zero));
    const int high = _mm_movemask_ps(_mm_cmplt_ps(_mm_loadu_ps(v + 4), zero));
    return static_cast<uint8_t>(low | high << 4);
  }
#endif
  uint8_t byte = 0;
  for (int64_t k = 0; k < n; ++k) byte |= static_cast<uint8_t>(v[k] < 0.0f) << k;
  return byte;
}

// Encodes v[0, d) into signs and scales (bf16 bits); with `residual`, also v -= C(v) (else v is
// only read).
void encode(float* v, int64_t d, int64_t block, uint8_t* signs, uint16_t* scales, bool residual) {
  const int64_t blocks = sign_blocks(d, block);
  at::parallel_for(0, blocks, block_grain(block, blocks), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t lo = std::min(d, b * block), hi = std::min(d, lo + block);
      scales[b] = bf16_scale(abs_sum(v + lo, hi - lo), std::max<int64_t>(1, hi - lo));
      for (int64_t i = (lo + 7) / 8; i < (hi + 7) / 8; ++i) {
        signs[i] = sign_byte(v + 8 * i, std::min<int64_t>(8, d - 8 * i));
      }
      if (!residual) continue;
      const float s = bf16_to_float(scales[b]);
#pragma omp simd
      for (int64_t j = lo; j < hi; ++j) v[j] -= v[j] < 0.0f ? -s : s;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> empty_payload(int64_t d, int64_t block, const at::TensorOptions& like) {
  return {at::empty({(d + 7) / 8}, like.dtype(at::kByte)),
          at::empty({sign_blocks(d, block)}, like.dtype(at::kBFloat16))};
}

std::tuple<at::Tensor, at::Tensor> sign_encode_cpu(const at::Tensor& x, int64_t block) {
  check_sign_encode(x, block);
  const at::Tensor v = x.reshape(-1).to(at::kFloat).contiguous();
  auto [signs, scales] = empty_payload(v.numel(), block, v.options());
  encode(const_cast<float*>(v.const_data_ptr<float>()), v.numel(), block, signs.data_ptr<uint8_t>(),
         reinterpret_cast<uint16_t*>(scales.data_ptr<at::BFloat16>()), false);
  return {signs, scales};
}

std::tuple<at::Tensor, at::Tensor> sign_residual_cpu(at::Tensor& v, int64_t block) {
  check_sign_residual(v, block);
  auto [signs, scales] = empty_payload(v.numel(), block, v.options());
  encode(v.data_ptr<float>(), v.numel(), block, signs.data_ptr<uint8_t>(),
         reinterpret_cast<uint16_t*>(scales.data_ptr<at::BFloat16>()), true);
  return {signs, scales};
}

// kSignMask[byte][k]: the fp32 sign bit of entry k of a sign byte, so that decoding a whole byte is
// eight XORs of the scale's bits (a vector op), -s exactly where the bit is set.
constexpr auto kSignMask = [] {
  std::array<std::array<uint32_t, 8>, 256> mask{};
  for (int byte = 0; byte < 256; ++byte)
    for (int k = 0; k < 8; ++k) mask[byte][k] = (byte >> k) & 1 ? 0x80000000u : 0u;
  return mask;
}();

// Writes (add = false) or adds (add = true) sign_j * bits_as_float(s) for j in [lo, hi), s the fp32
// bits of a block's magnitude: whole sign bytes are eight XORs (a vector op), the edges one by one.
void apply_block(uint32_t* dst, const uint8_t* signs, int64_t lo, int64_t hi, uint32_t s, bool add) {
  auto put = [&](int64_t j, uint32_t bits) {
    if (add) {
      float* f = reinterpret_cast<float*>(dst + j);
      *f += bits_to_float(bits);
    } else {
      dst[j] = bits;
    }
  };
  int64_t j = lo;
  for (; j < hi && (j & 7); ++j) put(j, s ^ kSignMask[signs[j >> 3]][j & 7]);
  for (; j + 8 <= hi; j += 8) {
    const uint32_t* mask = kSignMask[signs[j >> 3]].data();
    if (add) {
      float* out = reinterpret_cast<float*>(dst + j);
#pragma omp simd
      for (int k = 0; k < 8; ++k) out[k] += bits_to_float(s ^ mask[k]);
    } else {
#pragma omp simd
      for (int k = 0; k < 8; ++k) dst[j + k] = s ^ mask[k];
    }
  }
  for (; j < hi; ++j) put(j, s ^ kSignMask[signs[j >> 3]][j & 7]);
}

at::Tensor sign_decode_cpu(const at::Tensor& signs, const at::Tensor& scales, int64_t numel, int64_t block) {
  check_sign_decode(signs, scales, numel, block);
  const at::Tensor sign_t = signs.contiguous(), scale_t = scales.contiguous();
  const uint8_t* bits = sign_t.const_data_ptr<uint8_t>();
  const uint16_t* scale = reinterpret_cast<const uint16_t*>(scale_t.const_data_ptr<at::BFloat16>());
  at::Tensor out = at::empty({numel}, signs.options().dtype(at::kFloat));
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.data_ptr<float>());
  at::parallel_for(0, sign_blocks(numel, block), std::max<int64_t>(1, kGrainEntries / block),
                   [&](int64_t first, int64_t last) {
                     for (int64_t b = first; b < last; ++b) {
                       const int64_t lo = std::min(numel, b * block), hi = std::min(numel, lo + block);
                       apply_block(dst, bits, lo, hi, uint32_t(scale[b]) << 16, false);
                     }
                   });
  return out;
}

// Block by block, every payload in list order, so each block of out stays in cache for all n.
void sign_accumulate_cpu(at::Tensor out, at::TensorList signs, at::TensorList scales, int64_t block, double alpha) {
  check_sign_accumulate(out, signs, scales, block);
  std::vector<at::Tensor> sign_t, scale_t;
  for (size_t r = 0; r < signs.size(); ++r) {
    sign_t.push_back(signs[r].contiguous());
    scale_t.push_back(scales[r].contiguous());
  }
  const int64_t numel = out.numel();
  const float factor = static_cast<float>(alpha);
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.data_ptr<float>());
  at::parallel_for(0, sign_blocks(numel, block), std::max<int64_t>(1, kGrainEntries / block),
                   [&](int64_t first, int64_t last) {
                     for (int64_t b = first; b < last; ++b) {
                       const int64_t lo = std::min(numel, b * block), hi = std::min(numel, lo + block);
                       for (size_t r = 0; r < sign_t.size(); ++r) {
                         const uint16_t s = reinterpret_cast<const uint16_t*>(
                             scale_t[r].const_data_ptr<at::BFloat16>())[b];
                         const float magnitude = bf16_to_float(s) * factor;
                         apply_block(dst, sign_t[r].const_data_ptr<uint8_t>(), lo, hi, float_bits(magnitude), true);
                       }
                     }
                   });
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("sign_encode", &sign_encode_cpu);
  m.impl("sign_residual", &sign_residual_cpu);
  m.impl("sign_decode", &sign_decode_cpu);
  m.impl("sign_accumulate", &sign_accumulate_cpu);
}

}  // namespace threepc
