// Argument checks shared by the CPU and CUDA kernels of every op, so that both raise the same
// clear error (naming the problem and the fix) before touching any memory.
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/ATen.h>

namespace threepc {

inline constexpr const char* kNonFiniteMessage =
    "float_encode got NaN or Inf values; the float formats have no codes for them. "
    "Check the gradients (loss scaling, a diverged step) before compressing";

inline void check_k(int64_t n, int64_t k, const char* op) {
  TORCH_CHECK(k >= 0 && k <= n, op, ": k must lie in [0, numel] = [0, ", n, "], got k = ", k);
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
              " must be float32, float16 or bfloat16, got ", dt, "; cast it with .float()");
}

inline void check_ef21_step(const at::Tensor& grad, const at::Tensor& h) {
  check_floating(grad, "ef21_topk_step", "grad");
  TORCH_CHECK(h.scalar_type() == at::kFloat, "ef21_topk_step: h must be float32 (the estimate is kept in fp32), got ",
              h.scalar_type());
  TORCH_CHECK(h.is_contiguous(), "ef21_topk_step: h is updated in place and must be contiguous; pass h.contiguous() "
              "and keep that tensor as the estimate");
  TORCH_CHECK(grad.numel() == h.numel(), "ef21_topk_step: grad has ", grad.numel(), " elements but h has ", h.numel());
  TORCH_CHECK(grad.device() == h.device(), "ef21_topk_step: grad is on ", grad.device(), " but h on ", h.device());
}

inline void check_sparse_accumulate(const at::Tensor& out, const at::Tensor& values, const at::Tensor& indices) {
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous(),
              "sparse_accumulate: out must be a contiguous float32 tensor, got ", out.scalar_type(),
              out.is_contiguous() ? "" : " (non-contiguous)");
  TORCH_CHECK(values.numel() == indices.numel(), "sparse_accumulate: values has ", values.numel(),
              " elements but indices has ", indices.numel());
  TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
              "sparse_accumulate: indices must be int64 or int32, got ", indices.scalar_type());
  TORCH_CHECK(values.device() == out.device() && indices.device() == out.device(),
              "sparse_accumulate: out, values and indices must be on one device, got ", out.device(), ", ",
              values.device(), " and ", indices.device());
}

inline void check_format(int64_t exponent, int64_t mantissa, int64_t bias, double scale) {
  TORCH_CHECK(exponent >= 1 && mantissa >= 0 && exponent + mantissa <= 7,
              "float format [1, ", exponent, ", ", mantissa, "] needs exponent >= 1, mantissa >= 0 and "
              "exponent + mantissa <= 7 (codes fit in one byte)");
  TORCH_CHECK(bias >= -64 && bias <= 64, "float format bias must lie in [-64, 64], got ", bias);
  TORCH_CHECK(scale > 0 && std::isfinite(scale), "float format scale must be positive and finite, got ", scale);
}

// ``out`` of a float_encode/decode.out call: contiguous, ``dtype``, as many elements as ``input``.
inline void check_out(const at::Tensor& out, const at::Tensor& input, at::ScalarType dtype, const char* op) {
  TORCH_CHECK(out.scalar_type() == dtype && out.is_contiguous() && out.numel() == input.numel() &&
                  out.device() == input.device(),
              op, ": out must be a contiguous ", dtype, " tensor of ", input.numel(), " elements on ", input.device(),
              ", got ", out.scalar_type(), " of ", out.numel(), " elements");
}

}  // namespace threepc
