// CPU kernels of float64 sums in a fixed order: squared_distances (||x - o||^2, the lazy triggers of
// CLAG, LAG, SASG and EF21+), abs_moments (CO3's GenNorm fit) and momentum_compensate (ef14_mc's
// momentum and error feedback, and the sums its clipping estimate reads), one pass and no temporaries where
// the torch expressions write tensors of x's size. The order (compressors/kernels/reference.py)
// makes the bits those of the reference, numba and the CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "op_checks.h"

namespace threepc {
namespace {

// The terms summed, each exact in float64 (fp32 values, their squares, 0 or 1).
struct SquaredDifference {
  const float* __restrict x;
  const float* __restrict o;
  __attribute__((always_inline)) double operator()(int64_t i) const {
    const double d = x[i] - o[i];  // one fp32 subtraction
    return d * d;
  }
};
struct NonZero {
  const float* __restrict x;
  __attribute__((always_inline)) double operator()(int64_t i) const { return x[i] != 0.0f ? 1.0 : 0.0; }
};
struct Magnitude {
  const float* __restrict x;
  __attribute__((always_inline)) double operator()(int64_t i) const { return std::fabs(static_cast<double>(x[i])); }
};
struct Square {
  const float* __restrict x;
  __attribute__((always_inline)) double operator()(int64_t i) const {
    const double v = x[i];
    return v * v;
  }
};

// momentum_compensate's first sum: g_i^2, while it writes u'_i = beta u_i + gain g_i and v_i = e_i + u'_i
// (each product and each sum one fp32 rounding: no contraction).
struct MomentumUpdate {
  const float* __restrict g;
  const float* __restrict u;
  const float* __restrict e;
  float* __restrict u_new;
  float* __restrict v;
  float beta, gain;
  __attribute__((always_inline)) double operator()(int64_t i) const {
    const float momentum = beta * u[i] + gain * g[i];
    u_new[i] = momentum;
    v[i] = e[i] + momentum;
    const double x = g[i];
    return x * x;
  }
};
struct Product {
  const float* __restrict x;
  const float* __restrict y;
  __attribute__((always_inline)) double operator()(int64_t i) const {
    return static_cast<double>(x[i]) * static_cast<double>(y[i]);
  }
};

// The sum of term(i) over [lo, hi), lo a multiple of kSumLanes: term i into lane (i - lo) mod 32
// in index order, then the lanes left to right. The lanes are independent, so the inner loop
// vectorises without reordering a sum.
template <typename Term>
__attribute__((always_inline)) inline double ordered_loop(const Term& term, int64_t lo, int64_t hi) {
  double acc[kSumLanes] = {};
  int64_t i = lo;
  for (; i + kSumLanes <= hi; i += kSumLanes) {
#pragma omp simd
    for (int j = 0; j < kSumLanes; ++j) acc[j] += term(i + j);
  }
  for (int j = 0; i < hi; ++i, ++j) acc[j] += term(i);
  double sum = acc[0];
  for (int j = 1; j < kSumLanes; ++j) sum += acc[j];
  return sum;
}

template <typename Term>
double ordered_range(const Term& term, int64_t lo, int64_t hi) {
  return ordered_loop(term, lo, hi);
}

template <typename Term>
__attribute__((target("avx2"))) double ordered_range_avx2(const Term& term, int64_t lo, int64_t hi) {
  return ordered_loop(term, lo, hi);
}

template <typename Term>
__attribute__((target("avx512f"))) double ordered_range_avx512(const Term& term, int64_t lo, int64_t hi) {
  return ordered_loop(term, lo, hi);
}

// The widest build the CPU runs: the lanes are the order's, not the vector's, so every width
// gives the same bits; the float64 adds and the widening of each term set the speed.
template <typename Term>
double ordered_widest(const Term& term, int64_t lo, int64_t hi) {
  static const bool has_avx512 = __builtin_cpu_supports("avx512f"), has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx512) return ordered_range_avx512(term, lo, hi);
  return has_avx2 ? ordered_range_avx2(term, lo, hi) : ordered_range(term, lo, hi);
}

// k sums over n entries, sum j's block [lo, hi) given by block_sum(j, lo, hi): the blocks in
// parallel (all k sums of a block together, so the block stays in cache), then each sum's
// blocks left to right. Returns float64[k] with x's device.
template <typename BlockSum>
at::Tensor ordered_sums(const at::Tensor& x, int64_t n, int64_t k, const BlockSum& block_sum) {
  const int64_t blocks = std::max<int64_t>(1, (n + kSumBlock - 1) / kSumBlock);
  std::vector<double> sums(blocks * k);  // block b's sum j at b * k + j
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * kSumBlock, hi = std::min(n, lo + kSumBlock);
      for (int64_t j = 0; j < k; ++j) sums[b * k + j] = block_sum(j, lo, hi);
    }
  });
  at::Tensor out = at::empty({k}, x.options().dtype(at::kDouble));
  double* result = out.data_ptr<double>();
  for (int64_t j = 0; j < k; ++j) {
    double total = 0.0;
    for (int64_t b = 0; b < blocks; ++b) total += sums[b * k + j];
    result[j] = total;
  }
  return out;
}

at::Tensor flat_float(const at::Tensor& t) { return t.reshape(-1).to(at::kFloat).contiguous(); }  // fp16/bf16: exact

at::Tensor squared_distances_cpu(const at::Tensor& x, at::TensorList others) {
  check_squared_distances(x, others);
  const at::Tensor flat = flat_float(x);
  std::vector<at::Tensor> flat_others;
  for (const at::Tensor& o : others) flat_others.push_back(flat_float(o));
  const float* xp = flat.const_data_ptr<float>();
  return ordered_sums(x, flat.numel(), static_cast<int64_t>(others.size()), [&](int64_t j, int64_t lo, int64_t hi) {
    return ordered_widest(SquaredDifference{xp, flat_others[j].const_data_ptr<float>()}, lo, hi);
  });
}

at::Tensor abs_moments_cpu(const at::Tensor& x) {
  check_abs_moments(x);
  const at::Tensor flat = flat_float(x);
  const float* xp = flat.const_data_ptr<float>();
  return ordered_sums(x, flat.numel(), 3, [&](int64_t j, int64_t lo, int64_t hi) {
    if (j == 0) return ordered_widest(NonZero{xp}, lo, hi);
    if (j == 1) return ordered_widest(Magnitude{xp}, lo, hi);
    return ordered_widest(Square{xp}, lo, hi);
  });
}

// Each block written and summed while it is in cache: the update with sum g^2, then sum u g.
at::Tensor momentum_compensate_cpu(const at::Tensor& grad, const at::Tensor& u, const at::Tensor& e, double beta,
                                   double gain, at::Tensor u_new, at::Tensor v) {
  check_momentum_compensate(grad, u, e, beta, gain, u_new, v);
  const at::Tensor flat = flat_float(grad);
  const float *gp = flat.const_data_ptr<float>(), *up = u.const_data_ptr<float>();
  const MomentumUpdate update{gp, up, e.const_data_ptr<float>(), u_new.data_ptr<float>(), v.data_ptr<float>(),
                              static_cast<float>(beta), static_cast<float>(gain)};
  return ordered_sums(grad, flat.numel(), 2, [&](int64_t j, int64_t lo, int64_t hi) {
    return j == 0 ? ordered_widest(update, lo, hi) : ordered_widest(Product{gp, up}, lo, hi);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("squared_distances", &squared_distances_cpu);
  m.impl("abs_moments", &abs_moments_cpu);
  m.impl("momentum_compensate", &momentum_compensate_cpu);
}

}  // namespace threepc
