// CPU kernel of squared_distances: ||x - o||^2 for the lazy triggers (CLAG, LAG, SASG, EF21+) in
// one pass over x and o and no temporaries, where (x - o).square().sum() writes two tensors of x's
// size. The summation order is fixed (compressors/kernels/reference.py), so the bits are those of
// the reference, numba and the CUDA kernel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "op_checks.h"

namespace threepc {
namespace {

// The sum over [lo, hi), lo a multiple of kDistanceLanes: entry i into lane (i - lo) mod 32 in
// index order, then the lanes left to right. The lanes are independent, so the inner loop
// vectorises without reordering a sum; d * d is exact in float64, so contraction could not
// change a bit either.
__attribute__((always_inline)) inline double distance_loop(const float* __restrict x, const float* __restrict o,
                                                           int64_t lo, int64_t hi) {
  double acc[kDistanceLanes] = {};
  int64_t i = lo;
  for (; i + kDistanceLanes <= hi; i += kDistanceLanes) {
#pragma omp simd
    for (int j = 0; j < kDistanceLanes; ++j) {
      const double d = x[i + j] - o[i + j];  // one fp32 subtraction
      acc[j] += d * d;
    }
  }
  for (int j = 0; i < hi; ++i, ++j) {
    const double d = x[i] - o[i];
    acc[j] += d * d;
  }
  double sum = acc[0];
  for (int j = 1; j < kDistanceLanes; ++j) sum += acc[j];
  return sum;
}

double distance_range(const float* x, const float* o, int64_t lo, int64_t hi) { return distance_loop(x, o, lo, hi); }

__attribute__((target("avx2"))) double distance_range_avx2(const float* x, const float* o, int64_t lo, int64_t hi) {
  return distance_loop(x, o, lo, hi);
}

double distance_widest(const float* x, const float* o, int64_t lo, int64_t hi) {
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  return has_avx2 ? distance_range_avx2(x, o, lo, hi) : distance_range(x, o, lo, hi);
}

at::Tensor squared_distances_cpu(const at::Tensor& x, at::TensorList others) {
  check_squared_distances(x, others);
  const at::Tensor flat = x.reshape(-1).to(at::kFloat).contiguous();  // fp16/bf16: exact
  std::vector<at::Tensor> flat_others;
  for (const at::Tensor& o : others) flat_others.push_back(o.reshape(-1).to(at::kFloat).contiguous());
  const int64_t n = flat.numel(), k = static_cast<int64_t>(others.size());
  const int64_t blocks = std::max<int64_t>(1, (n + kDistanceBlock - 1) / kDistanceBlock);
  std::vector<double> sums(blocks * k);  // block b's sum for other j at b * k + j
  const float* xp = flat.const_data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {  // every other per block: the block of x stays in cache
      const int64_t lo = b * kDistanceBlock, hi = std::min(n, lo + kDistanceBlock);
      for (int64_t j = 0; j < k; ++j) sums[b * k + j] = distance_widest(xp, flat_others[j].const_data_ptr<float>(), lo, hi);
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

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) { m.impl("squared_distances", &squared_distances_cpu); }

}  // namespace threepc
