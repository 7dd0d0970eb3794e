// CUDA kernels of every threepc op, registered for the CUDA dispatch key. They
// return what the CPU kernels return, bit for bit (tests/test_cuda.py); the
// specification is compressors/kernels/reference.py.
//
// All work is queued on the current stream with no device synchronisation,
// except where the result's size or an error depends on the data:
// float_encode reads back one flag to raise on NaN/Inf, sparse_accumulate the
// indices' range, packed_encode/accumulate the support's order and range (csrc/op_checks.h),
// and the Huffman ops (sequential,
// variable-length) copy to the CPU coder and back.
//
// Top-k by |v| (topk_abs, ef21_topk_step) is a radix select on the key
// bits(|v|) (the float's bits without the sign: unsigned order = order of |v|):
//   1. four passes of 8-bit digits, most significant first; each histograms the
//      keys that share the digits found so far and picks the digit holding the
//      k-th largest key, which leaves T (the k-th key) and `need` (how many keys
//      equal to T belong to the top k);
//   2. an ordered compaction in tiles: every tile counts its keys above T and
//      equal to T, two exclusive scans over tiles give each tile its output
//      offset and the number of ties before it, and every tile writes its keys
//      above T and its first ties (lowest index first, as on the CPU) in index
//      order. Indices come out ascending, as on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/cub.cuh>

#include <tuple>

#include "../float_codes.h"
#include "../adam_codes.h"
#include "../op_checks.h"
#include "../sign_codes.h"

namespace threepc {
namespace {

constexpr int kThreads = 256;
constexpr int kRounds = 16;                  // rounds of kThreads elements per compaction tile
constexpr int kTile = kThreads * kRounds;    // elements per compaction tile
constexpr int kDigits = 256;                 // 8-bit radix digits

// |v|'s order; every NaN one key above +inf (this GPU's arithmetic returns one canonical NaN, a CPU's
// keeps the operand's sign and payload: ranking NaNs by them would select differently).
__device__ __forceinline__ uint32_t abs_key(float v) { return min(__float_as_uint(v) & 0x7fffffffu, 0x7f800001u); }

template <typename scalar_t>
struct AbsValue {  // x[i], ranked by |x[i]|
  const scalar_t* x;
  __device__ __forceinline__ float operator()(int64_t i) const { return static_cast<float>(x[i]); }
};

template <typename scalar_t>
struct DiffValue {  // the EF21 difference grad[i] - h[i], computed, never stored
  const scalar_t* grad;
  const float* h;
  __device__ __forceinline__ float operator()(int64_t i) const { return __fsub_rn(static_cast<float>(grad[i]), h[i]); }
};

struct SelectState {
  uint32_t prefix;             // the digits of T found so far
  unsigned long long need;     // how many of the top k lie among the keys matching the prefix
};

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

int grid_for(int64_t n) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 8LL * sms)));
}

__global__ void select_init(SelectState* state, int64_t k) {
  state->prefix = 0;
  state->need = static_cast<unsigned long long>(k);
}

template <typename Value>
__global__ void digit_histogram(Value value, int64_t n, const SelectState* state, int shift,
                                unsigned long long* hist) {
  __shared__ unsigned int local[kDigits];
  for (int b = threadIdx.x; b < kDigits; b += blockDim.x) local[b] = 0;
  __syncthreads();
  const uint32_t prefix = state->prefix;
  const uint32_t decided = shift == 24 ? 0u : (0xFFFFFFFFu << (shift + 8));
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t key = abs_key(value(i));
    if ((key & decided) == prefix) atomicAdd(&local[(key >> shift) & 0xFFu], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kDigits; b += blockDim.x) {
    if (local[b] != 0) atomicAdd(&hist[b], static_cast<unsigned long long>(local[b]));
  }
}

// The digit of the k-th largest key among those matching the prefix: scan the bins from the top.
__global__ void pick_digit(SelectState* state, const unsigned long long* hist, int shift) {
  unsigned long long above = 0;
  for (int d = kDigits - 1; d >= 0; --d) {
    if (above + hist[d] >= state->need) {
      state->prefix |= uint32_t(d) << shift;
      state->need -= above;
      return;
    }
    above += hist[d];
  }
}

template <typename Value>
__global__ void tile_counts(Value value, int64_t n, const SelectState* state, int64_t* above, int64_t* ties) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage storage[2];
  const uint32_t t = state->prefix;
  const int64_t begin = blockIdx.x * int64_t(kTile), end = min(n, begin + kTile);
  int gt = 0, eq = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const uint32_t key = abs_key(value(i));
    gt += key > t;
    eq += key == t;
  }
  const int tile_gt = Reduce(storage[0]).Sum(gt);
  const int tile_eq = Reduce(storage[1]).Sum(eq);
  if (threadIdx.x == 0) {
    above[blockIdx.x] = tile_gt;
    ties[blockIdx.x] = tile_eq;
  }
}

// taken[b] = what tile b writes: its keys above T and the ties left after the earlier tiles'.
__global__ void tile_taken(const int64_t* above, const int64_t* ties, const int64_t* ties_before,
                           const SelectState* state, int64_t tiles, int64_t* taken) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= tiles) return;
  const int64_t left = static_cast<int64_t>(state->need) - ties_before[b];
  taken[b] = above[b] + max(int64_t(0), min(left, ties[b]));
}

template <typename Value>
__global__ void tile_select(Value value, int64_t n, const SelectState* state, const int64_t* ties_before,
                            const int64_t* offsets, int64_t* out_index, float* out_value) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  const uint32_t t = state->prefix;
  const int64_t need = static_cast<int64_t>(state->need);
  int64_t tie_rank = ties_before[blockIdx.x], position = offsets[blockIdx.x];
  const int64_t begin = blockIdx.x * int64_t(kTile);
  for (int r = 0; r < kRounds; ++r) {  // rounds of kThreads consecutive elements keep index order
    const int64_t i = begin + int64_t(r) * kThreads + threadIdx.x;
    float v = 0.f;
    uint32_t key = 0;
    if (i < n) {
      v = value(i);
      key = abs_key(v);
    }
    const int is_tie = i < n && key == t;
    int tie_before = 0, round_ties = 0;
    Scan(storage).ExclusiveSum(is_tie, tie_before, round_ties);
    __syncthreads();
    const int take = i < n && (key > t || (is_tie && tie_rank + tie_before < need));
    int take_before = 0, round_taken = 0;
    Scan(storage).ExclusiveSum(take, take_before, round_taken);
    __syncthreads();
    if (take) {
      out_index[position + take_before] = i;
      out_value[position + take_before] = v;
    }
    tie_rank += round_ties;
    position += round_taken;
  }
}

template <typename T>
void exclusive_sum(const T* in, T* out, int64_t count, const at::Tensor& like) {
  cudaStream_t stream = current_stream();
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, in, out, count, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.data_ptr(), bytes, in, out, count, stream));
}

// The top k of value(0..n-1) by magnitude into out_index (ascending) and out_value.
template <typename Value>
void select_topk(Value value, int64_t n, int64_t k, const at::Tensor& like, int64_t* out_index, float* out_value) {
  if (k == 0) return;
  cudaStream_t stream = current_stream();
  at::Tensor state_t = at::empty({static_cast<int64_t>(sizeof(SelectState))}, like.options().dtype(at::kByte));
  auto* state = reinterpret_cast<SelectState*>(state_t.data_ptr());
  at::Tensor hist = at::zeros({4, kDigits}, like.options().dtype(at::kLong));
  auto* bins = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
  select_init<<<1, 1, 0, stream>>>(state, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int grid = grid_for(n);
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    digit_histogram<<<grid, kThreads, 0, stream>>>(value, n, state, shift, bins + pass * kDigits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pick_digit<<<1, 1, 0, stream>>>(state, bins + pass * kDigits, shift);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t tiles = (n + kTile - 1) / kTile;
  at::Tensor counts = at::empty({5, tiles}, like.options().dtype(at::kLong));
  int64_t* above = counts[0].data_ptr<int64_t>();
  int64_t* ties = counts[1].data_ptr<int64_t>();
  int64_t* ties_before = counts[2].data_ptr<int64_t>();
  int64_t* taken = counts[3].data_ptr<int64_t>();
  int64_t* offsets = counts[4].data_ptr<int64_t>();
  tile_counts<<<tiles, kThreads, 0, stream>>>(value, n, state, above, ties);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  exclusive_sum(ties, ties_before, tiles, like);
  tile_taken<<<(tiles + kThreads - 1) / kThreads, kThreads, 0, stream>>>(above, ties, ties_before, state, tiles, taken);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  exclusive_sum(taken, offsets, tiles, like);
  tile_select<<<tiles, kThreads, 0, stream>>>(value, n, state, ties_before, offsets, out_index, out_value);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> topk_abs_cuda(const at::Tensor& x, int64_t k) {
  check_topk_abs(x, k);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor flat = x.contiguous().view(-1);
  const int64_t n = flat.numel();
  at::Tensor indices = at::empty({k}, x.options().dtype(at::kLong));
  at::Tensor values = at::empty({k}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "topk_abs", [&] {
    select_topk(AbsValue<scalar_t>{flat.const_data_ptr<scalar_t>()}, n, k, x, indices.mutable_data_ptr<int64_t>(),
                values.mutable_data_ptr<float>());
  });
  // fp32 values are x's own bits; a 16-bit value's round trip through fp32 would quiet a signalling NaN.
  return {x.scalar_type() == at::kFloat ? values : flat.index_select(0, indices), indices};
}

__global__ void add_at(float* h, const int64_t* index, const float* value, int64_t k) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j < k) h[index[j]] = __fadd_rn(h[index[j]], value[j]);  // indices are distinct
}

std::tuple<at::Tensor, at::Tensor> ef21_topk_step_cuda(const at::Tensor& grad, at::Tensor h, int64_t k) {
  check_ef21_topk_step(grad, h, k);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor flat = grad.contiguous().view(-1);
  const int64_t n = flat.numel();
  at::Tensor indices = at::empty({k}, h.options().dtype(at::kLong));
  at::Tensor values = at::empty({k}, h.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ef21_topk_step", [&] {
    select_topk(DiffValue<scalar_t>{flat.const_data_ptr<scalar_t>(), h.const_data_ptr<float>()}, n, k, h,
                indices.mutable_data_ptr<int64_t>(), values.mutable_data_ptr<float>());
  });
  if (k > 0) {
    add_at<<<(k + kThreads - 1) / kThreads, kThreads, 0, current_stream()>>>(
        h.mutable_data_ptr<float>(), indices.const_data_ptr<int64_t>(), values.const_data_ptr<float>(), k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {values, indices};
}

// out[key] += alpha * value over each run of equal keys, in input order (the sort is stable):
// every coordinate sums in rank order, as on the CPU, whatever the thread schedule.
// The indices were range-checked on the host (check_sparse_accumulate).
__global__ void accumulate_runs(float* out, const int64_t* keys, const int64_t* order, const float* values, int64_t m,
                                float alpha) {
  const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p >= m || (p > 0 && keys[p] == keys[p - 1])) return;
  const int64_t key = keys[p];
  float acc = out[key];
  for (int64_t q = p; q < m && keys[q] == key; ++q) acc = __fadd_rn(acc, __fmul_rn(alpha, values[order[q]]));
  out[key] = acc;
}

void sparse_accumulate_cuda(at::Tensor out, const at::Tensor& values, const at::Tensor& indices, double alpha) {
  check_sparse_accumulate(out, values, indices, alpha);
  const int64_t m = indices.numel();
  if (m == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  cudaStream_t stream = current_stream();
  const at::Tensor val = values.to(at::kFloat).contiguous().view(-1);
  const at::Tensor keys_in = indices.to(at::kLong).contiguous().view(-1);
  const at::Tensor order_in = at::arange(m, keys_in.options());
  at::Tensor keys = at::empty_like(keys_in), order = at::empty_like(order_in);
  // The indices lie in [0, numel) (checked above): sorting on their low bits alone gives the same
  // stable order in fewer passes (23 bits for a 6.5M-entry bucket, not 64).
  const int bits = 64 - __builtin_clzll(static_cast<unsigned long long>(std::max<int64_t>(out.numel() - 1, 1)));
  size_t bytes = 0;
  const auto* kin = reinterpret_cast<const unsigned long long*>(keys_in.const_data_ptr<int64_t>());
  auto* kout = reinterpret_cast<unsigned long long*>(keys.mutable_data_ptr<int64_t>());
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, kin, kout, order_in.const_data_ptr<int64_t>(),
                                                 order.mutable_data_ptr<int64_t>(), m, 0, bits, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(bytes)}, out.options().dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), bytes, kin, kout, order_in.const_data_ptr<int64_t>(),
                                                 order.mutable_data_ptr<int64_t>(), m, 0, bits, stream));
  accumulate_runs<<<(m + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      out.mutable_data_ptr<float>(), keys.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(),
      val.const_data_ptr<float>(), m, static_cast<float>(alpha));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// -- float conversion -----------------------------------------------------------------------
template <typename scalar_t>
__global__ void float_encode_kernel(const scalar_t* v, int64_t n, FloatFormat f, int64_t seed, uint8_t* out,
                                    int* bad) {
  int found = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = __fdiv_rn(static_cast<float>(v[i]), f.scale);
    found |= non_finite(x);
    out[i] = seed < 0 ? encode_nearest(x, f) : encode_stochastic(x, element_noise(seed, i), f);
  }
  if (found) *bad = 1;
}

void float_encode_out_cuda(const at::Tensor& v, int64_t exponent, int64_t mantissa, int64_t bias, double scale,
                           int64_t seed, const at::Tensor& codes) {
  check_float_encode(v, exponent, mantissa, bias, scale);
  check_out("float_encode", codes, v, at::kByte, "uint8");
  const c10::cuda::CUDAGuard guard(v.device());
  const at::Tensor input = v.contiguous();
  const int64_t n = input.numel();
  if (n == 0) return;
  const FloatFormat f{int(exponent), int(mantissa), int(bias), float(scale)};
  at::Tensor bad = at::zeros({1}, v.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "float_encode", [&] {
    float_encode_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(
        input.const_data_ptr<scalar_t>(), n, f, seed, codes.mutable_data_ptr<uint8_t>(), bad.mutable_data_ptr<int>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(bad.item<int>() == 0, kNonFiniteMessage);  // the one read-back: errors are raised on the host
}

at::Tensor float_encode_cuda(const at::Tensor& v, int64_t exponent, int64_t mantissa, int64_t bias, double scale,
                             int64_t seed) {
  at::Tensor codes = at::empty({v.numel()}, v.options().dtype(at::kByte));
  float_encode_out_cuda(v, exponent, mantissa, bias, scale, seed, codes);
  return codes;
}

struct DecodeTable {
  float value[256];
};

__global__ void float_decode_kernel(const uint8_t* codes, int64_t n, DecodeTable table, float* out) {
  __shared__ float local[256];
  for (int c = threadIdx.x; c < 256; c += blockDim.x) local[c] = table.value[c];
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = local[codes[i]];
  }
}

void float_decode_out_cuda(const at::Tensor& codes, int64_t exponent, int64_t mantissa, int64_t bias, double scale,
                           const at::Tensor& out) {
  check_float_decode(codes, exponent, mantissa, bias, scale);
  check_out("float_decode", out, codes, at::kFloat, "float32");
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor input = codes.contiguous();
  const int64_t n = input.numel();
  if (n == 0) return;
  DecodeTable table;
  const std::array<float, 256> values = decode_table(int(exponent), int(mantissa), int(bias), float(scale));
  std::copy(values.begin(), values.end(), table.value);
  float_decode_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(
      input.const_data_ptr<uint8_t>(), n, table, out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor float_decode_cuda(const at::Tensor& codes, int64_t exponent, int64_t mantissa, int64_t bias, double scale) {
  at::Tensor out = at::empty({codes.numel()}, codes.options().dtype(at::kFloat));
  float_decode_out_cuda(codes, exponent, mantissa, bias, scale, out);
  return out;
}

__global__ void float_accumulate_kernel(const uint8_t* codes, int64_t n, DecodeTable table, float* out) {
  __shared__ float local[256];
  for (int c = threadIdx.x; c < 256; c += blockDim.x) local[c] = table.value[c];
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = __fadd_rn(out[i], local[codes[i]]);
  }
}

void float_accumulate_cuda(at::Tensor out, const at::Tensor& codes, int64_t exponent, int64_t mantissa, int64_t bias,
                           double scale, double alpha) {
  check_float_accumulate(out, codes, exponent, mantissa, bias, scale, alpha);
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor input = codes.contiguous();
  const int64_t n = input.numel();
  if (n == 0) return;
  DecodeTable table;
  const std::array<float, 256> values =
      accumulate_table(int(exponent), int(mantissa), int(bias), float(scale), float(alpha));
  std::copy(values.begin(), values.end(), table.value);
  float_accumulate_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(
      input.const_data_ptr<uint8_t>(), n, table, out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// -- Top-K packed in 16 bits an entry -------------------------------------------------------
// The scale is computed on the device from max |v| (amax propagates NaN) and read there by the
// codes kernel: no read-back besides the indices' check. Counts: each block binary-searches the
// ascending indices for its range. Accumulate: an exclusive scan of a payload's counts gives
// each block's first entry; each entry finds its block by binary search and adds its value (the
// code's value at scale 1 times the scale, one fp32 product, as decode_table computes it). The
// entries of a valid payload are distinct coordinates, so the atomic adds never meet and the
// sums are those of the CPU; payloads go in list order on the stream.
__global__ void packed_scale_kernel(const float* top, int64_t k, float max_value, float* scale) {
  *scale = k ? packed_scale(*top, max_value) : 1.0f;
}

__global__ void packed_codes_kernel(const float* v, const int64_t* index, int64_t k, int64_t block, FloatFormat f,
                                    const float* scale, uint8_t* codes, uint8_t* offsets) {
  const float s = *scale;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < k; j += int64_t(gridDim.x) * blockDim.x) {
    codes[j] = s != s ? uint8_t(0) : encode_nearest(__fdiv_rn(v[j], s), f);
    offsets[j] = uint8_t(index[j] % block);
  }
}

__device__ int64_t first_at_least(const int64_t* sorted, int64_t n, int64_t value) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (sorted[mid] < value) lo = mid + 1; else hi = mid;
  }
  return lo;
}

__global__ void packed_counts_kernel(const int64_t* index, int64_t k, int64_t block, int64_t blocks, uint8_t* counts) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    counts[b] = uint8_t(first_at_least(index, k, (b + 1) * block) - first_at_least(index, k, b * block));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> packed_encode_cuda(const at::Tensor& values,
                                                                             const at::Tensor& indices, int64_t numel,
                                                                             int64_t block, int64_t exponent,
                                                                             int64_t mantissa, int64_t bias) {
  check_packed_encode(values, indices, numel, block, exponent, mantissa, bias);
  const c10::cuda::CUDAGuard guard(values.device());
  cudaStream_t stream = current_stream();
  const at::Tensor v = values.reshape(-1).to(at::kFloat).contiguous();
  const at::Tensor index = indices.reshape(-1).to(at::kLong).contiguous();
  const int64_t k = v.numel(), blocks = packed_blocks(numel, block);
  const auto bytes = v.options().dtype(at::kByte);
  at::Tensor codes = at::empty({k}, bytes), offsets = at::empty({k}, bytes), counts = at::empty({blocks}, bytes);
  at::Tensor scale = at::empty({1}, v.options());
  const at::Tensor top = k ? v.abs().amax() : at::zeros({}, v.options());
  packed_scale_kernel<<<1, 1, 0, stream>>>(top.const_data_ptr<float>(), k,
                                           max_value(int(exponent), int(mantissa), int(bias)),
                                           scale.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (k) {
    const FloatFormat f{int(exponent), int(mantissa), int(bias), 1.0f};
    packed_codes_kernel<<<grid_for(k), kThreads, 0, stream>>>(
        v.const_data_ptr<float>(), index.const_data_ptr<int64_t>(), k, block, f, scale.const_data_ptr<float>(),
        codes.mutable_data_ptr<uint8_t>(), offsets.mutable_data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (blocks) {
    packed_counts_kernel<<<grid_for(blocks), kThreads, 0, stream>>>(index.const_data_ptr<int64_t>(), k, block, blocks,
                                                                   counts.mutable_data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {codes, scale, counts, offsets};
}

__global__ void packed_add_kernel(float* out, const uint8_t* codes, const int64_t* starts, int64_t blocks,
                                  const uint8_t* offsets, int64_t k, int64_t block, DecodeTable table,
                                  const float* scale, float alpha) {
  __shared__ float local[256];
  for (int c = threadIdx.x; c < 256; c += blockDim.x) local[c] = table.value[c];
  __syncthreads();
  const float s = *scale;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < k; j += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = blocks;  // the last block b with starts[b] <= j: the one holding entry j
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (starts[mid] <= j) lo = mid; else hi = mid;
    }
    atomicAdd(out + lo * block + offsets[j], __fmul_rn(alpha, __fmul_rn(local[codes[j]], s)));
  }
}

void packed_accumulate_cuda(at::Tensor out, at::TensorList codes, at::TensorList scales, at::TensorList counts,
                            at::TensorList offsets, int64_t block, int64_t exponent, int64_t mantissa, int64_t bias,
                            double alpha) {
  check_packed_accumulate(out, codes, scales, counts, offsets, block, exponent, mantissa, bias);
  const c10::cuda::CUDAGuard guard(out.device());
  DecodeTable table;
  const std::array<float, 256> values = decode_table(int(exponent), int(mantissa), int(bias), 1.0f);
  std::copy(values.begin(), values.end(), table.value);
  for (size_t r = 0; r < codes.size(); ++r) {
    const int64_t k = codes[r].numel(), blocks = counts[r].numel();
    if (k == 0) continue;
    const at::Tensor c = codes[r].contiguous(), o = offsets[r].contiguous();
    const at::Tensor n = counts[r].reshape(-1).to(at::kLong).contiguous();
    at::Tensor starts = at::empty_like(n);
    exclusive_sum(n.const_data_ptr<int64_t>(), starts.mutable_data_ptr<int64_t>(), blocks, n);
    packed_add_kernel<<<grid_for(k), kThreads, 0, current_stream()>>>(
        out.mutable_data_ptr<float>(), c.const_data_ptr<uint8_t>(), starts.const_data_ptr<int64_t>(), blocks,
        o.const_data_ptr<uint8_t>(), k, block, table, scales[r].const_data_ptr<float>(), static_cast<float>(alpha));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// -- Huffman: the sequential coder runs on the CPU ------------------------------------------
// A prefix code's output length depends on every symbol before it, so the stream is produced
// by the CPU kernel: one device-to-host copy of the symbols (1 byte each), one host-to-device
// copy of the result.
at::Tensor huffman_encode_cuda(const at::Tensor& symbols, const at::Tensor& codes, const at::Tensor& lengths) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("threepc::huffman_encode", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(symbols.cpu(), codes.cpu(), lengths.cpu()).to(symbols.device());
}

at::Tensor huffman_decode_cuda(const at::Tensor& stream, int64_t n, const at::Tensor& codes, const at::Tensor& lengths) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("threepc::huffman_decode", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&)>();
  return op.call(stream.cpu(), n, codes.cpu(), lengths.cpu()).to(stream.device());
}

// -- rANS: the sequential coder runs on the CPU, as Huffman's --------------------------------
at::Tensor rans_encode_cuda(const at::Tensor& symbols, const at::Tensor& freqs) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("threepc::rans_encode", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(symbols.cpu(), freqs.cpu()).to(symbols.device());
}

at::Tensor rans_decode_cuda(const at::Tensor& stream, int64_t n, const at::Tensor& freqs) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("threepc::rans_decode", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, const at::Tensor&)>();
  return op.call(stream.cpu(), n, freqs.cpu()).to(stream.device());
}

// -- scaled sign: one CUDA block per sign block ----------------------------------------------
// The encode sums |v| of its sign block (fp64, cub's block reduction; any order rounds alike but
// for a 2^-29 chance, as the specification says) and packs the bytes that start in the block; the
// residual and the decode are a second, elementwise kernel (a byte may straddle two blocks, so
// entries are changed only after every block has read its signs).
__global__ void sign_encode_kernel(const float* v, int64_t d, int64_t block, uint8_t* signs, uint16_t* scales) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const int64_t b = blockIdx.x;
  const int64_t lo = b * block < d ? b * block : d, hi = lo + block < d ? lo + block : d;
  double sum = 0.0;
  for (int64_t j = lo + threadIdx.x; j < hi; j += kThreads) sum += fabs(static_cast<double>(v[j]));
  sum = Reduce(temp).Sum(sum);
  if (threadIdx.x == 0) scales[b] = bf16_scale(sum, hi - lo > 1 ? hi - lo : 1);
  for (int64_t i = (lo + 7) / 8 + threadIdx.x; i < (hi + 7) / 8; i += kThreads) {
    uint8_t byte = 0;
    for (int k = 0; k < 8 && 8 * i + k < d; ++k) byte |= uint8_t(v[8 * i + k] < 0.0f) << k;
    signs[i] = byte;
  }
}

enum class SignApply { kDecode, kSubtract, kAdd };

// With c_j = sign_j fp32(s_b * factor): out_j = c_j (decode), out_j -= c_j (residual) or
// out_j += c_j (accumulate).
__global__ void sign_apply_kernel(float* out, const uint8_t* signs, const uint16_t* scales, int64_t n, int64_t block,
                                  float factor, SignApply mode) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    const float s = __fmul_rn(bf16_to_float(scales[j / block]), factor);
    const float c = (signs[j >> 3] >> (j & 7)) & 1 ? -s : s;
    out[j] = mode == SignApply::kDecode     ? c
             : mode == SignApply::kSubtract ? __fsub_rn(out[j], c)
                                            : __fadd_rn(out[j], c);
  }
}

std::tuple<at::Tensor, at::Tensor> sign_encode_into(const at::Tensor& v, int64_t block) {
  const int64_t d = v.numel(), blocks = d > 0 ? (d + block - 1) / block : 1;
  at::Tensor signs = at::empty({(d + 7) / 8}, v.options().dtype(at::kByte));
  at::Tensor scales = at::empty({blocks}, v.options().dtype(at::kBFloat16));
  sign_encode_kernel<<<blocks, kThreads, 0, current_stream()>>>(
      v.const_data_ptr<float>(), d, block, signs.mutable_data_ptr<uint8_t>(),
      reinterpret_cast<uint16_t*>(scales.mutable_data_ptr<at::BFloat16>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {signs, scales};
}

void sign_apply(float* out, const at::Tensor& signs, const at::Tensor& scales, int64_t n, int64_t block,
                float factor, SignApply mode) {
  if (n == 0) return;
  sign_apply_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(
      out, signs.const_data_ptr<uint8_t>(), reinterpret_cast<const uint16_t*>(scales.const_data_ptr<at::BFloat16>()),
      n, block, factor, mode);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> sign_encode_cuda(const at::Tensor& x, int64_t block) {
  check_sign_encode(x, block);
  const c10::cuda::CUDAGuard guard(x.device());
  return sign_encode_into(x.reshape(-1).to(at::kFloat).contiguous(), block);
}

std::tuple<at::Tensor, at::Tensor> sign_residual_cuda(at::Tensor& v, int64_t block) {
  check_sign_residual(v, block);
  const c10::cuda::CUDAGuard guard(v.device());
  auto payload = sign_encode_into(v, block);
  sign_apply(v.mutable_data_ptr<float>(), std::get<0>(payload), std::get<1>(payload), v.numel(), block, 1.0f,
             SignApply::kSubtract);
  return payload;
}

at::Tensor sign_decode_cuda(const at::Tensor& signs, const at::Tensor& scales, int64_t numel, int64_t block) {
  check_sign_decode(signs, scales, numel, block);
  const c10::cuda::CUDAGuard guard(signs.device());
  at::Tensor out = at::empty({numel}, signs.options().dtype(at::kFloat));
  sign_apply(out.mutable_data_ptr<float>(), signs.contiguous(), scales.contiguous(), numel, block, 1.0f,
             SignApply::kDecode);
  return out;
}

// One elementwise kernel per payload, queued in list order on one stream: rank order per entry.
void sign_accumulate_cuda(at::Tensor out, at::TensorList signs, at::TensorList scales, int64_t block, double alpha) {
  check_sign_accumulate(out, signs, scales, block);
  const c10::cuda::CUDAGuard guard(out.device());
  for (size_t r = 0; r < signs.size(); ++r) {
    sign_apply(out.mutable_data_ptr<float>(), signs[r].contiguous(), scales[r].contiguous(), out.numel(), block,
               static_cast<float>(alpha), SignApply::kAdd);
  }
}

// -- Adam's normalisation (adam_momentum: and its momentum): one elementwise pass (csrc/adam_codes.h)
struct AdamPointers {  // u and u_new null for adam_normalize (then d holds d, else u^)
  const float *m, *v, *u, *c1, *c2;
  float *m_new, *v_new, *u_new, *d;
};

template <typename scalar_t>
__global__ void adam_kernel(const scalar_t* g, AdamPointers a, int64_t c1_step, int64_t c2_step, int64_t n,
                            AdamConstants k) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    const float gj = static_cast<float>(g[j]), c1j = a.c1[j * c1_step], c2j = a.c2[j * c2_step];
    if (a.u != nullptr && k.mix) {
      adam_momentum_one<true>(gj, a.m[j], a.v[j], a.u[j], c1j, c2j, k, a.m_new[j], a.v_new[j], a.u_new[j], a.d[j]);
    } else if (a.u != nullptr) {
      adam_momentum_one<false>(gj, a.m[j], a.v[j], a.u[j], c1j, c2j, k, a.m_new[j], a.v_new[j], a.u_new[j], a.d[j]);
    } else if (k.mix) {
      adam_normalize_one<true>(gj, a.m[j], a.v[j], c1j, c2j, k, a.m_new[j], a.v_new[j], a.d[j]);
    } else {
      adam_normalize_one<false>(gj, a.m[j], a.v[j], c1j, c2j, k, a.m_new[j], a.v_new[j], a.d[j]);
    }
  }
}

void adam_run_cuda(const at::Tensor& grad, const AdamPointers& a, const at::Tensor& c1, const at::Tensor& c2,
                   double beta1, double beta2, double eps, double share) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.reshape(-1).contiguous();
  const int64_t n = g.numel();
  if (n == 0) return;
  const AdamConstants k = adam_constants(beta1, beta2, eps, share);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "adam_normalize", [&] {
    adam_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(g.const_data_ptr<scalar_t>(), a, c1.numel() > 1,
                                                                 c2.numel() > 1, n, k);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void adam_normalize_out_cuda(const at::Tensor& grad, const at::Tensor& m, const at::Tensor& v, const at::Tensor& c1,
                             const at::Tensor& c2, double beta1, double beta2, double eps, double share,
                             at::Tensor m_new, at::Tensor v_new, at::Tensor d) {
  check_adam_inputs("adam_normalize", grad, {{"m", &m}, {"v", &v}}, c1, c2, beta1, beta2, eps, share);
  check_new_outputs("adam_normalize", grad, {{"m", &m}, {"v", &v}}, {{"m_new", &m_new}, {"v_new", &v_new}, {"d", &d}});
  adam_run_cuda(grad,
                {m.const_data_ptr<float>(), v.const_data_ptr<float>(), nullptr, c1.const_data_ptr<float>(),
                 c2.const_data_ptr<float>(), m_new.mutable_data_ptr<float>(), v_new.mutable_data_ptr<float>(), nullptr,
                 d.mutable_data_ptr<float>()},
                c1, c2, beta1, beta2, eps, share);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adam_normalize_cuda(const at::Tensor& grad, const at::Tensor& m,
                                                                   const at::Tensor& v, const at::Tensor& c1,
                                                                   const at::Tensor& c2, double beta1, double beta2,
                                                                   double eps, double share) {
  const int64_t n = grad.numel();
  at::Tensor m_new = at::empty({n}, m.options()), v_new = at::empty({n}, m.options()), d = at::empty({n}, m.options());
  adam_normalize_out_cuda(grad, m, v, c1, c2, beta1, beta2, eps, share, m_new, v_new, d);
  return {m_new, v_new, d};
}

void adam_momentum_out_cuda(const at::Tensor& grad, const at::Tensor& m, const at::Tensor& v, const at::Tensor& u,
                            const at::Tensor& c1, const at::Tensor& c2, double beta1, double beta2, double eps,
                            double share, at::Tensor m_new, at::Tensor v_new, at::Tensor u_new, at::Tensor u_hat) {
  check_adam_inputs("adam_momentum", grad, {{"m", &m}, {"v", &v}, {"u", &u}}, c1, c2, beta1, beta2, eps, share);
  check_new_outputs("adam_momentum", grad, {{"m", &m}, {"v", &v}, {"u", &u}},
                     {{"m_new", &m_new}, {"v_new", &v_new}, {"u_new", &u_new}, {"u_hat", &u_hat}});
  adam_run_cuda(grad,
                {m.const_data_ptr<float>(), v.const_data_ptr<float>(), u.const_data_ptr<float>(),
                 c1.const_data_ptr<float>(), c2.const_data_ptr<float>(), m_new.mutable_data_ptr<float>(),
                 v_new.mutable_data_ptr<float>(), u_new.mutable_data_ptr<float>(), u_hat.mutable_data_ptr<float>()},
                c1, c2, beta1, beta2, eps, share);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adam_momentum_cuda(
    const at::Tensor& grad, const at::Tensor& m, const at::Tensor& v, const at::Tensor& u, const at::Tensor& c1,
    const at::Tensor& c2, double beta1, double beta2, double eps, double share) {
  const int64_t n = grad.numel();
  at::Tensor m_new = at::empty({n}, m.options()), v_new = at::empty({n}, m.options()),
             u_new = at::empty({n}, m.options()), u_hat = at::empty({n}, m.options());
  adam_momentum_out_cuda(grad, m, v, u, c1, c2, beta1, beta2, eps, share, m_new, v_new, u_new, u_hat);
  return {m_new, v_new, u_new, u_hat};
}

// -- float64 sums in the CPU's order (op_checks.h, reference.py), so the same bits -------------------
// The terms, each exact in float64.
struct SquaredDifference {
  const float* x;
  const float* o;
  __device__ __forceinline__ double operator()(int64_t i) const {
    const double d = __fsub_rn(x[i], o[i]);
    return __dmul_rn(d, d);
  }
};
struct NonZero {
  const float* x;
  __device__ __forceinline__ double operator()(int64_t i) const { return x[i] != 0.0f ? 1.0 : 0.0; }
};
struct Magnitude {
  const float* x;
  __device__ __forceinline__ double operator()(int64_t i) const { return fabs(static_cast<double>(x[i])); }
};
struct Square {
  const float* x;
  __device__ __forceinline__ double operator()(int64_t i) const {
    const double v = x[i];
    return __dmul_rn(v, v);
  }
};

struct MomentumUpdate {  // momentum_compensate's first sum (csrc/ordered_sums.cpp)
  const float* g;
  const float* u;
  const float* e;
  float* u_new;
  float* v;
  float beta, gain, carry;
  __device__ __forceinline__ double operator()(int64_t i) const {
    const float momentum = __fadd_rn(__fmul_rn(beta, u[i]), __fmul_rn(gain, g[i]));
    u_new[i] = momentum;
    v[i] = __fadd_rn(__fmul_rn(carry, e[i]), momentum);
    const double x = g[i];
    return __dmul_rn(x, x);
  }
};
struct Product {
  const float* x;
  const float* y;
  __device__ __forceinline__ double operator()(int64_t i) const {
    return __dmul_rn(static_cast<double>(x[i]), static_cast<double>(y[i]));
  }
};

// One warp per block of kSumBlock entries: lane j sums the terms i = j (mod 32) of the block in
// index order; lane 0 adds the lanes left to right.
template <typename Term>
__global__ void ordered_blocks_kernel(Term term, int64_t n, double* sums) {
  const int64_t lo = static_cast<int64_t>(blockIdx.x) * kSumBlock, hi = min(n, lo + kSumBlock);
  double acc = 0.0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kSumLanes) acc = __dadd_rn(acc, term(i));
  __shared__ double lanes[kSumLanes];
  lanes[threadIdx.x] = acc;
  __syncwarp();
  if (threadIdx.x == 0) {
    double sum = lanes[0];
    for (int j = 1; j < kSumLanes; ++j) sum = __dadd_rn(sum, lanes[j]);
    sums[blockIdx.x] = sum;
  }
}

__global__ void ordered_total_kernel(const double* sums, int64_t blocks, double* out) {  // one thread
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) total = __dadd_rn(total, sums[b]);
  *out = total;
}

int64_t sum_blocks(int64_t n) { return std::max<int64_t>(1, (n + kSumBlock - 1) / kSumBlock); }

// out[0] = the ordered sum of term(i) over n entries; sums: a float64 scratch of sum_blocks(n).
template <typename Term>
void ordered_sum_cuda(const Term& term, int64_t n, at::Tensor& sums, double* out) {
  const int64_t blocks = sum_blocks(n);
  ordered_blocks_kernel<<<blocks, kSumLanes, 0, current_stream()>>>(term, n, sums.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ordered_total_kernel<<<1, 1, 0, current_stream()>>>(sums.const_data_ptr<double>(), blocks, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor flat_float(const at::Tensor& t) { return t.reshape(-1).to(at::kFloat).contiguous(); }  // fp16/bf16: exact

at::Tensor squared_distances_cuda(const at::Tensor& x, at::TensorList others) {
  check_squared_distances(x, others);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor flat = flat_float(x);
  const int64_t n = flat.numel();
  at::Tensor out = at::empty({static_cast<int64_t>(others.size())}, x.options().dtype(at::kDouble));
  at::Tensor sums = at::empty({sum_blocks(n)}, out.options());
  for (size_t j = 0; j < others.size(); ++j) {
    const at::Tensor o = flat_float(others[j]);
    ordered_sum_cuda(SquaredDifference{flat.const_data_ptr<float>(), o.const_data_ptr<float>()}, n, sums,
                     out.mutable_data_ptr<double>() + j);
  }
  return out;
}

at::Tensor abs_moments_cuda(const at::Tensor& x) {
  check_abs_moments(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor flat = flat_float(x);
  const int64_t n = flat.numel();
  const float* xp = flat.const_data_ptr<float>();
  at::Tensor out = at::empty({3}, x.options().dtype(at::kDouble));
  at::Tensor sums = at::empty({sum_blocks(n)}, out.options());
  ordered_sum_cuda(NonZero{xp}, n, sums, out.mutable_data_ptr<double>());
  ordered_sum_cuda(Magnitude{xp}, n, sums, out.mutable_data_ptr<double>() + 1);
  ordered_sum_cuda(Square{xp}, n, sums, out.mutable_data_ptr<double>() + 2);
  return out;
}

at::Tensor momentum_compensate_cuda(const at::Tensor& grad, const at::Tensor& u, const at::Tensor& e, double beta,
                                    double gain, double carry, at::Tensor u_new, at::Tensor v) {
  check_momentum_compensate(grad, u, e, beta, gain, carry, u_new, v);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor flat = flat_float(grad);
  const int64_t n = flat.numel();
  const float *gp = flat.const_data_ptr<float>(), *up = u.const_data_ptr<float>();
  at::Tensor out = at::empty({2}, grad.options().dtype(at::kDouble));
  at::Tensor sums = at::empty({sum_blocks(n)}, out.options());
  ordered_sum_cuda(MomentumUpdate{gp, up, e.const_data_ptr<float>(), u_new.mutable_data_ptr<float>(),
                                  v.mutable_data_ptr<float>(), static_cast<float>(beta), static_cast<float>(gain),
                                  static_cast<float>(carry)},
                   n, sums, out.mutable_data_ptr<double>());
  ordered_sum_cuda(Product{gp, up}, n, sums, out.mutable_data_ptr<double>() + 1);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CUDA, m) {
  m.impl("topk_abs", &topk_abs_cuda);
  m.impl("ef21_topk_step", &ef21_topk_step_cuda);
  m.impl("sparse_accumulate", &sparse_accumulate_cuda);
  m.impl("float_encode", &float_encode_cuda);
  m.impl("float_encode.out", &float_encode_out_cuda);
  m.impl("float_decode", &float_decode_cuda);
  m.impl("float_decode.out", &float_decode_out_cuda);
  m.impl("float_accumulate", &float_accumulate_cuda);
  m.impl("huffman_encode", &huffman_encode_cuda);
  m.impl("huffman_decode", &huffman_decode_cuda);
  m.impl("rans_encode", &rans_encode_cuda);
  m.impl("rans_decode", &rans_decode_cuda);
  m.impl("sign_encode", &sign_encode_cuda);
  m.impl("sign_residual", &sign_residual_cuda);
  m.impl("sign_decode", &sign_decode_cuda);
  m.impl("sign_accumulate", &sign_accumulate_cuda);
  m.impl("adam_normalize", &adam_normalize_cuda);
  m.impl("adam_normalize.out", &adam_normalize_out_cuda);
  m.impl("adam_momentum", &adam_momentum_cuda);
  m.impl("adam_momentum.out", &adam_momentum_out_cuda);
  m.impl("packed_encode", &packed_encode_cuda);
  m.impl("packed_accumulate", &packed_accumulate_cuda);
  m.impl("squared_distances", &squared_distances_cuda);
  m.impl("abs_moments", &abs_moments_cuda);
  m.impl("momentum_compensate", &momentum_compensate_cuda);
}

}  // namespace threepc
