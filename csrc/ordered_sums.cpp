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

// The terms summed, each exact in float64 (fp32 values, their squares and products, 0 or 1). A
// kernel's terms are one functor: terms(i, j, acc) adds entry i's term k to acc[k][j], lane j of sum k.
struct SquaredDifference {
  const float* __restrict x;
  const float* __restrict o;
  __attribute__((always_inline)) double operator()(int64_t i) const {
    const double d = x[i] - o[i];  // one fp32 subtraction
    return d * d;
  }
};

// momentum_compensate's terms: g_i^2 and u_i g_i, while it writes u'_i = beta u_i + gain g_i and
// v_i = carry e_i + u'_i (each product and each sum one fp32 rounding: no contraction).
struct MomentumUpdate {
  static constexpr int kTerms = 2;
  const float* __restrict g;
  const float* __restrict u;
  const float* __restrict e;
  float* __restrict u_new;
  float* __restrict v;
  float beta, gain, carry;
  __attribute__((always_inline)) void operator()(int64_t i, int j, double (*acc)[kSumLanes]) const {
    const float momentum = beta * u[i] + gain * g[i];
    u_new[i] = momentum;
    v[i] = carry * e[i] + momentum;
    const double x = g[i];
    acc[0][j] += x * x;
    acc[1][j] += static_cast<double>(u[i]) * x;
  }
};
// abs_moments' terms: 1 for a non-zero entry (NaN included), |x_i| and x_i^2.
struct Moments {
  static constexpr int kTerms = 3;
  const float* __restrict x;
  __attribute__((always_inline)) void operator()(int64_t i, int j, double (*acc)[kSumLanes]) const {
    const double v = x[i];
    acc[0][j] += x[i] != 0.0f ? 1.0 : 0.0;
    acc[1][j] += std::fabs(v);
    acc[2][j] += v * v;
  }
};
// A sum of one term.
template <typename Term>
struct Single {
  static constexpr int kTerms = 1;
  Term term;
  __attribute__((always_inline)) void operator()(int64_t i, int j, double (*acc)[kSumLanes]) const {
    acc[0][j] += term(i);
  }
};

// The kTerms sums of terms over [lo, hi), lo a multiple of kSumLanes, into out: term k of entry i
// into lane (i - lo) mod 32 of sum k in index order, then each sum's lanes left to right. The lanes
// are independent, so the inner loop vectorises without reordering a sum, and each sum's order is
// its own whatever the other terms: one pass for all of them (a loop per sum read each block
// again: abs_moments took 1.32 ms for 6.5M entries, one pass 0.69 ms; benchmarks/results/kernel_sums_one_pass.md).
template <typename Terms>
__attribute__((always_inline)) inline void ordered_loop(const Terms& terms, int64_t lo, int64_t hi, double* out) {
  constexpr int K = Terms::kTerms;
  double acc[K][kSumLanes] = {};
  int64_t i = lo;
  for (; i + kSumLanes <= hi; i += kSumLanes) {
#pragma omp simd
    for (int j = 0; j < kSumLanes; ++j) terms(i + j, j, acc);
  }
  for (int j = 0; i < hi; ++i, ++j) terms(i, j, acc);
  for (int k = 0; k < K; ++k) {
    double sum = acc[k][0];
    for (int j = 1; j < kSumLanes; ++j) sum += acc[k][j];
    out[k] = sum;
  }
}

template <typename Terms>
void ordered_range(const Terms& terms, int64_t lo, int64_t hi, double* out) {
  ordered_loop(terms, lo, hi, out);
}

template <typename Terms>
__attribute__((target("avx2"))) void ordered_range_avx2(const Terms& terms, int64_t lo, int64_t hi, double* out) {
  ordered_loop(terms, lo, hi, out);
}

template <typename Terms>
__attribute__((target("avx512f"))) void ordered_range_avx512(const Terms& terms, int64_t lo, int64_t hi,
                                                             double* out) {
  ordered_loop(terms, lo, hi, out);
}

// The widest build the CPU runs: the lanes are the order's, not the vector's, so every width
// gives the same bits; the float64 adds and the widening of each term set the speed.
template <typename Terms>
void ordered_widest(const Terms& terms, int64_t lo, int64_t hi, double* out) {
  static const bool has_avx512 = __builtin_cpu_supports("avx512f"), has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx512) return ordered_range_avx512(terms, lo, hi, out);
  if (has_avx2) return ordered_range_avx2(terms, lo, hi, out);
  ordered_range(terms, lo, hi, out);
}

// k sums over n entries, block [lo, hi)'s k sums written to out by block_sums(lo, hi, out): the blocks
// in parallel (all k sums of a block together, so the block stays in cache), then each sum's blocks
// left to right. Returns float64[k] with x's device.
template <typename BlockSums>
at::Tensor ordered_sums(const at::Tensor& x, int64_t n, int64_t k, const BlockSums& block_sums) {
  const int64_t blocks = std::max<int64_t>(1, (n + kSumBlock - 1) / kSumBlock);
  std::vector<double> sums(blocks * k);  // block b's sum j at b * k + j
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * kSumBlock, hi = std::min(n, lo + kSumBlock);
      block_sums(lo, hi, sums.data() + b * k);
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
  const int64_t k = static_cast<int64_t>(others.size());
  return ordered_sums(x, flat.numel(), k, [&](int64_t lo, int64_t hi, double* out) {
    for (int64_t j = 0; j < k; ++j) {
      ordered_widest(Single<SquaredDifference>{{xp, flat_others[j].const_data_ptr<float>()}}, lo, hi, out + j);
    }
  });
}

at::Tensor abs_moments_cpu(const at::Tensor& x) {
  check_abs_moments(x);
  const at::Tensor flat = flat_float(x);
  const Moments moments{flat.const_data_ptr<float>()};
  return ordered_sums(x, flat.numel(), Moments::kTerms,
                      [&](int64_t lo, int64_t hi, double* out) { ordered_widest(moments, lo, hi, out); });
}

// Each block written and both sums taken in one pass.
at::Tensor momentum_compensate_cpu(const at::Tensor& grad, const at::Tensor& u, const at::Tensor& e, double beta,
                                   double gain, double carry, at::Tensor u_new, at::Tensor v) {
  check_momentum_compensate(grad, u, e, beta, gain, carry, u_new, v);
  const at::Tensor flat = flat_float(grad);
  const MomentumUpdate update{flat.const_data_ptr<float>(), u.const_data_ptr<float>(), e.const_data_ptr<float>(),
                              u_new.data_ptr<float>(), v.data_ptr<float>(), static_cast<float>(beta),
                              static_cast<float>(gain), static_cast<float>(carry)};
  return ordered_sums(grad, flat.numel(), MomentumUpdate::kTerms,
                      [&](int64_t lo, int64_t hi, double* out) { ordered_widest(update, lo, hi, out); });
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("squared_distances", &squared_distances_cpu);
  m.impl("abs_moments", &abs_moments_cpu);
  m.impl("momentum_compensate", &momentum_compensate_cpu);
}

}  // namespace threepc
