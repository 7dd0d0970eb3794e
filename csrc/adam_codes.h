// The arithmetic of adam_normalize, shared by the CPU (csrc/adam.cpp) and CUDA (csrc/cuda/kernels.cu)
// kernels: every operation one fp32 rounding, no fused multiply-add (the kernels are compiled
// without -mfma; CUDA uses the _rn intrinsics), so both give the reference's bits
// (compressors/kernels/reference.py).
#pragma once

#include <cmath>

#include "float_codes.h"

namespace threepc {

struct AdamConstants {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, share, one_minus_share;
  bool mix;  // share < 1: mix in min(m'^2 c1, v^) (the mean-of-ranks estimate)
};

inline AdamConstants adam_constants(double beta1, double beta2, double eps, double share) {
  return {float(beta1), float(1.0 - beta1), float(beta2), float(1.0 - beta2), float(eps), float(share),
          float(1.0 - share), share < 1.0};
}

#ifdef __CUDA_ARCH__
#define THREEPC_MUL __fmul_rn
#define THREEPC_ADD __fadd_rn
#define THREEPC_DIV __fdiv_rn
#define THREEPC_SQRT __fsqrt_rn
#else
THREEPC_HOST_DEVICE float threepc_mul(float a, float b) { return a * b; }
THREEPC_HOST_DEVICE float threepc_add(float a, float b) { return a + b; }
THREEPC_HOST_DEVICE float threepc_div(float a, float b) { return a / b; }
#define THREEPC_MUL threepc_mul
#define THREEPC_ADD threepc_add
#define THREEPC_DIV threepc_div
#define THREEPC_SQRT __builtin_sqrtf  // one sqrtps: the library compiles with -fno-math-errno
#endif

// m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g g, w = v' c2 (MIX: w s + min(m' m' c1, w) (1 - s)),
// d = g / (sqrt(w) + eps), 0 where that denominator is 0. Selects, no branches: a CPU loop vectorises.
template <bool MIX>
THREEPC_HOST_DEVICE void adam_normalize_one(float g, float m, float v, float c1, float c2, const AdamConstants& k,
                                            float& m_new, float& v_new, float& d) {
  m_new = THREEPC_ADD(THREEPC_MUL(m, k.beta1), THREEPC_MUL(g, k.one_minus_beta1));
  v_new = THREEPC_ADD(THREEPC_MUL(v, k.beta2), THREEPC_MUL(THREEPC_MUL(g, g), k.one_minus_beta2));
  float w = THREEPC_MUL(v_new, c2);
  if constexpr (MIX) {
    const float square = THREEPC_MUL(THREEPC_MUL(m_new, m_new), c1);
    const float s = ((w != w) | (w < square)) ? w : square;  // NaN if either is NaN (torch.minimum)
    w = THREEPC_ADD(THREEPC_MUL(w, k.share), THREEPC_MUL(s, k.one_minus_share));
  }
  const float denominator = THREEPC_ADD(THREEPC_SQRT(w), k.eps);
  const float quotient = THREEPC_DIV(g, denominator);
  d = denominator == 0.0f ? 0.0f : quotient;
}

// adam_normalize_one, then the momentum of d: u' = b1 u + (1 - b1) d and u^ = u' sqrt(c1) (c1 = 1 / (1 - b1^k)^2,
// so u^ is u' bias-corrected).
template <bool MIX>
THREEPC_HOST_DEVICE void adam_momentum_one(float g, float m, float v, float u, float c1, float c2,
                                           const AdamConstants& k, float& m_new, float& v_new, float& u_new,
                                           float& u_hat) {
  float d;
  adam_normalize_one<MIX>(g, m, v, c1, c2, k, m_new, v_new, d);
  u_new = THREEPC_ADD(THREEPC_MUL(u, k.beta1), THREEPC_MUL(d, k.one_minus_beta1));
  u_hat = THREEPC_MUL(u_new, THREEPC_SQRT(c1));
}

}  // namespace threepc
