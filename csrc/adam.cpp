// CPU kernels of Adam's normalisation before compression (compressors/mechanisms/adam_normalized.py):
// the moments and the normalised gradient (adam_momentum: and its bias-corrected momentum) in one
// pass, where the torch formulation makes a dozen passes and half as many allocations. The
// specification is compressors/kernels/reference.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "adam_codes.h"
#include "op_checks.h"

namespace threepc {
namespace {

constexpr int64_t kGrain = 1 << 15;

// u and u_new (u_hat in d) are null for adam_normalize.
struct AdamInputs {
  const float *m, *v, *u, *c1, *c2;
  float *m_new, *v_new, *u_new, *d;
};

// PER1/PER2: c1/c2 hold one value per entry (else one for all); MOMENTUM: adam_momentum (d is u^).
// __restrict and compile-time strides let the loop vectorise (sqrt and division included). Inlined
// into a baseline build (SSE2, 4 lanes) and an AVX2 one (8 lanes): the loop is compute-bound (a
// square root and a division per entry), so the lanes set its speed. Both give the same bits:
// every operation is one IEEE rounding in either width, and no contraction (-ffp-contract=off).
template <bool MIX, bool PER1, bool PER2, bool MOMENTUM, typename scalar_t>
__attribute__((always_inline)) inline void adam_loop(const scalar_t* __restrict g, const AdamInputs& a,
                                                     const AdamConstants& k, int64_t lo, int64_t hi) {
  const float* __restrict m = a.m;
  const float* __restrict v = a.v;
  const float* __restrict u = a.u;
  const float* __restrict c1 = a.c1;
  const float* __restrict c2 = a.c2;
  float* __restrict m_new = a.m_new;
  float* __restrict v_new = a.v_new;
  float* __restrict u_new = a.u_new;
  float* __restrict d = a.d;
#pragma omp simd
  for (int64_t j = lo; j < hi; ++j) {
    if constexpr (MOMENTUM) {
      adam_momentum_one<MIX>(static_cast<float>(g[j]), m[j], v[j], u[j], c1[PER1 ? j : 0], c2[PER2 ? j : 0], k,
                             m_new[j], v_new[j], u_new[j], d[j]);
    } else {
      adam_normalize_one<MIX>(static_cast<float>(g[j]), m[j], v[j], c1[PER1 ? j : 0], c2[PER2 ? j : 0], k, m_new[j],
                              v_new[j], d[j]);
    }
  }
}

template <bool MIX, bool PER1, bool PER2, bool MOMENTUM, typename scalar_t>
void adam_range(const scalar_t* g, const AdamInputs& a, const AdamConstants& k, int64_t lo, int64_t hi) {
  adam_loop<MIX, PER1, PER2, MOMENTUM>(g, a, k, lo, hi);
}

template <bool MIX, bool PER1, bool PER2, bool MOMENTUM, typename scalar_t>
__attribute__((target("avx2"))) void adam_range_avx2(const scalar_t* g, const AdamInputs& a, const AdamConstants& k,
                                                      int64_t lo, int64_t hi) {
  adam_loop<MIX, PER1, PER2, MOMENTUM>(g, a, k, lo, hi);
}

template <bool MIX, bool PER1, bool PER2, bool MOMENTUM, typename scalar_t>
void adam_widest(const scalar_t* g, const AdamInputs& a, const AdamConstants& k, int64_t lo, int64_t hi) {
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return adam_range_avx2<MIX, PER1, PER2, MOMENTUM>(g, a, k, lo, hi);
  adam_range<MIX, PER1, PER2, MOMENTUM>(g, a, k, lo, hi);
}

template <bool MIX, bool MOMENTUM, typename scalar_t>
void adam_dispatch(const scalar_t* g, const AdamInputs& a, const AdamConstants& k, bool per1, bool per2, int64_t lo,
                   int64_t hi) {
  if (per1 && per2) return adam_widest<MIX, true, true, MOMENTUM>(g, a, k, lo, hi);
  if (per1) return adam_widest<MIX, true, false, MOMENTUM>(g, a, k, lo, hi);
  if (per2) return adam_widest<MIX, false, true, MOMENTUM>(g, a, k, lo, hi);
  adam_widest<MIX, false, false, MOMENTUM>(g, a, k, lo, hi);
}

// Both ops, once their arguments are checked.
void adam_run(const at::Tensor& grad, const AdamInputs& a, const at::Tensor& c1, const at::Tensor& c2, double beta1,
              double beta2, double eps, double share) {
  const AdamConstants k = adam_constants(beta1, beta2, eps, share);
  const at::Tensor g = grad.reshape(-1).contiguous();
  const bool per1 = c1.numel() > 1, per2 = c2.numel() > 1, momentum = a.u != nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "adam_normalize", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    at::parallel_for(0, g.numel(), kGrain, [&](int64_t lo, int64_t hi) {
      if (k.mix && momentum) return adam_dispatch<true, true>(gp, a, k, per1, per2, lo, hi);
      if (k.mix) return adam_dispatch<true, false>(gp, a, k, per1, per2, lo, hi);
      if (momentum) return adam_dispatch<false, true>(gp, a, k, per1, per2, lo, hi);
      adam_dispatch<false, false>(gp, a, k, per1, per2, lo, hi);
    });
  });
}

void adam_normalize_out_cpu(const at::Tensor& grad, const at::Tensor& m, const at::Tensor& v, const at::Tensor& c1,
                            const at::Tensor& c2, double beta1, double beta2, double eps, double share,
                            at::Tensor m_new, at::Tensor v_new, at::Tensor d) {
  check_adam_inputs("adam_normalize", grad, {{"m", &m}, {"v", &v}}, c1, c2, beta1, beta2, eps, share);
  check_new_outputs("adam_normalize", grad, {{"m", &m}, {"v", &v}}, {{"m_new", &m_new}, {"v_new", &v_new}, {"d", &d}});
  adam_run(grad,
           {m.const_data_ptr<float>(), v.const_data_ptr<float>(), nullptr, c1.const_data_ptr<float>(),
            c2.const_data_ptr<float>(), m_new.data_ptr<float>(), v_new.data_ptr<float>(), nullptr, d.data_ptr<float>()},
           c1, c2, beta1, beta2, eps, share);
}

void adam_momentum_out_cpu(const at::Tensor& grad, const at::Tensor& m, const at::Tensor& v, const at::Tensor& u,
                           const at::Tensor& c1, const at::Tensor& c2, double beta1, double beta2, double eps,
                           double share, at::Tensor m_new, at::Tensor v_new, at::Tensor u_new, at::Tensor u_hat) {
  check_adam_inputs("adam_momentum", grad, {{"m", &m}, {"v", &v}, {"u", &u}}, c1, c2, beta1, beta2, eps, share);
  check_new_outputs("adam_momentum", grad, {{"m", &m}, {"v", &v}, {"u", &u}},
                     {{"m_new", &m_new}, {"v_new", &v_new}, {"u_new", &u_new}, {"u_hat", &u_hat}});
  adam_run(grad,
           {m.const_data_ptr<float>(), v.const_data_ptr<float>(), u.const_data_ptr<float>(), c1.const_data_ptr<float>(),
            c2.const_data_ptr<float>(), m_new.data_ptr<float>(), v_new.data_ptr<float>(), u_new.data_ptr<float>(),
            u_hat.data_ptr<float>()},
           c1, c2, beta1, beta2, eps, share);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adam_normalize_cpu(const at::Tensor& grad, const at::Tensor& m,
                                                                  const at::Tensor& v, const at::Tensor& c1,
                                                                  const at::Tensor& c2, double beta1, double beta2,
                                                                  double eps, double share) {
  const int64_t n = grad.numel();
  at::Tensor m_new = at::empty({n}, m.options()), v_new = at::empty({n}, m.options()), d = at::empty({n}, m.options());
  adam_normalize_out_cpu(grad, m, v, c1, c2, beta1, beta2, eps, share, m_new, v_new, d);
  return {m_new, v_new, d};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adam_momentum_cpu(
    const at::Tensor& grad, const at::Tensor& m, const at::Tensor& v, const at::Tensor& u, const at::Tensor& c1,
    const at::Tensor& c2, double beta1, double beta2, double eps, double share) {
  const int64_t n = grad.numel();
  at::Tensor m_new = at::empty({n}, m.options()), v_new = at::empty({n}, m.options()),
             u_new = at::empty({n}, m.options()), u_hat = at::empty({n}, m.options());
  adam_momentum_out_cpu(grad, m, v, u, c1, c2, beta1, beta2, eps, share, m_new, v_new, u_new, u_hat);
  return {m_new, v_new, u_new, u_hat};
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("adam_normalize", &adam_normalize_cpu);
  m.impl("adam_normalize.out", &adam_normalize_out_cpu);
  m.impl("adam_momentum", &adam_momentum_cpu);
  m.impl("adam_momentum.out", &adam_momentum_out_cpu);
}

}  // namespace threepc
