// CPU kernels of the top-k family: topk_abs, ef21_topk_step, sparse_accumulate.
//
// Selection ranks values by the bits of |v| as a uint32 key: clearing the sign
// bit of an IEEE float gives a key whose unsigned order is the order of |v|
// (-0 equal to +0); every NaN gets one key above +inf (kNanKey), as its sign and
// payload out of grad - h differ between CPU and GPU arithmetic. Keys fit in 31
// bits, so signed 32-bit SIMD compares order them too. Top-k of n keys:
//   1. a sample of evenly spaced runs bounds the k-th largest key from below;
//   2. one parallel pass over fixed chunks keeps the (index, value) pairs whose
//      key reaches the bound (AVX2 where the CPU has it: each 8 keys' hits are
//      left-packed by one permute and stored as 8 pairs; ~1.3 k pairs for k/n=1%);
//   3. an exact radix select (11+11+10-bit digits) on those pairs finds the k-th
//      key T; keys above T are all taken, keys equal to T lowest index first.
// If the sample overshot (fewer than k pairs kept), step 3 runs on all n keys.
// The result is one well-defined set whatever the threads do; indices ascend.
// ef21_topk_step computes d = grad - h on the fly in steps 1-2 (never stored).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "op_checks.h"

namespace threepc {
namespace {

constexpr int64_t kMinChunk = 1 << 16;    // elements per chunk of a parallel pass
constexpr int64_t kSmallInput = 1 << 14;  // below this, radix select on all keys without sampling
constexpr int64_t kSampleRuns = 512;      // runs sampled to bound the k-th largest key
constexpr int64_t kRunLength = 32;        // consecutive keys per run (two cache lines of fp32)

constexpr uint32_t kNanKey = 0x7f800001u;  // every NaN's key: above +inf, whatever its sign and payload

inline uint32_t abs_key(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return std::min(bits & 0x7fffffffu, kNanKey);
}

// Values x[i], ranked by |x[i]|.
template <typename scalar_t>
struct AbsKey {
  const scalar_t* x;
  float value(int64_t i) const { return static_cast<float>(x[i]); }
  uint32_t operator()(int64_t i) const { return abs_key(value(i)); }
};

// The EF21 difference d[i] = grad[i] - h[i] (computed, never stored), ranked by |d[i]|.
template <typename scalar_t>
struct DiffKey {
  const scalar_t* grad;
  const float* h;
  float value(int64_t i) const { return static_cast<float>(grad[i]) - h[i]; }
  uint32_t operator()(int64_t i) const { return abs_key(value(i)); }
};

// Bit j of the result: key(base + j) >= bound, for j < 16. Keys are below 2^31,
// so signed 32-bit compares order them.
template <typename KeyFn>
inline uint32_t mask16(const KeyFn& key, int64_t base, int32_t bound) {
  uint32_t mask = 0;
  for (int j = 0; j < 16; ++j) mask |= static_cast<uint32_t>(static_cast<int32_t>(key(base + j)) >= bound) << j;
  return mask;
}

// The (index, value) pairs one chunk of the filter pass keeps, in index order, in buffers that
// are never zero-filled (pages are touched only as used) with room to store 8 pairs at once. One
// cache line each: the chunks' threads update their counts side by side.
struct alignas(64) Kept {
  std::unique_ptr<int64_t[]> index;
  std::unique_ptr<float[]> value;
  int64_t size = 0, capacity = 0;
  void reserve(int64_t m) {
    if (m <= capacity) return;
    std::unique_ptr<int64_t[]> more_index(new int64_t[m]);
    std::unique_ptr<float[]> more_value(new float[m]);
    std::copy(index.get(), index.get() + size, more_index.get());
    std::copy(value.get(), value.get() + size, more_value.get());
    index.swap(more_index);
    value.swap(more_value);
    capacity = m;
  }
  void room(int64_t extra) {
    if (size + extra > capacity) reserve(std::max(2 * capacity, size + extra));
  }
  void push(int64_t i, float v) {
    room(1);
    index[size] = i;
    value[size++] = v;
  }
};

// Appends to `out` every i in [begin, end) with key(i) >= bound (portable: 16 keys per mask).
template <typename KeyFn>
void keep_at_least(const KeyFn& key, int64_t begin, int64_t end, int32_t bound, Kept& out) {
  int64_t base = begin;
  for (; base + 16 <= end; base += 16) {
    for (uint32_t mask = mask16(key, base, bound); mask != 0; mask &= mask - 1) {
      const int64_t i = base + __builtin_ctz(mask);
      out.push(i, key.value(i));
    }
  }
  for (; base < end; ++base) {
    if (static_cast<int32_t>(key(base)) >= bound) out.push(base, key.value(base));
  }
}

#if defined(__x86_64__)
// kHitLanes[m]: the lanes whose bit is set in the 8-bit mask m, in order (the rest 0).
alignas(32) constexpr auto kHitLanes = [] {
  std::array<std::array<int32_t, 8>, 256> lanes{};
  for (int m = 0; m < 256; ++m) {
    int n = 0;
    for (int lane = 0; lane < 8; ++lane) {
      if ((m >> lane) & 1) lanes[m][n++] = lane;
    }
  }
  return lanes;
}();

// The same for fp32 values x[i] (h == nullptr) or x[i] - h[i], eight keys per AVX2 compare.
// Compiled for AVX2 alone and called only where the CPU has it (see keep_at_least_fast).
__attribute__((target("avx2"))) void keep_at_least_avx2(const float* x, const float* h, int64_t begin, int64_t end,
                                                       int32_t bound, Kept& out) {
  const __m256i bound_minus_one = _mm256_set1_epi32(bound - 1), magnitude = _mm256_set1_epi32(0x7fffffff),
                nan_key = _mm256_set1_epi32(kNanKey);
  const auto value = [x, h](int64_t i) { return h != nullptr ? x[i] - h[i] : x[i]; };
  int64_t base = begin, size = out.size;  // the count stays in a register
  for (; base + 8 <= end; base += 8) {
    __m256 v = _mm256_loadu_ps(x + base);
    if (h != nullptr) v = _mm256_sub_ps(v, _mm256_loadu_ps(h + base));
    const __m256i keys = _mm256_min_epi32(_mm256_and_si256(_mm256_castps_si256(v), magnitude), nan_key);
    const uint32_t mask = static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(keys, bound_minus_one))));
    // Left-pack the hits with one permute (no branch on the data): store 8 pairs, keep popcount.
    const __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(kHitLanes[mask].data()));
    if (size + 8 > out.capacity) {
      out.size = size;
      out.room(8);
    }
    _mm256_storeu_ps(out.value.get() + size, _mm256_permutevar8x32_ps(v, lanes));
    const __m256i first = _mm256_set1_epi64x(base);
    int64_t* index = out.index.get() + size;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(index),
                        _mm256_add_epi64(first, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(lanes))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(index + 4),
                        _mm256_add_epi64(first, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(lanes, 1))));
    size += __builtin_popcount(mask);
  }
  out.size = size;
  for (; base < end; ++base) {
    if (static_cast<int32_t>(abs_key(value(base))) >= bound) out.push(base, value(base));
  }
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

bool keep_at_least_fast(const AbsKey<float>& key, int64_t begin, int64_t end, int32_t bound, Kept& out) {
  if (!cpu_has_avx2()) return false;
  keep_at_least_avx2(key.x, nullptr, begin, end, bound, out);
  return true;
}

bool keep_at_least_fast(const DiffKey<float>& key, int64_t begin, int64_t end, int32_t bound, Kept& out) {
  if (!cpu_has_avx2()) return false;
  keep_at_least_avx2(key.grad, key.h, begin, end, bound, out);
  return true;
}
#endif

// Inputs without a vectorised filter (fp16/bf16, CPUs without AVX2) take keep_at_least.
template <typename KeyFn>
bool keep_at_least_fast(const KeyFn&, int64_t, int64_t, int32_t, Kept&) {
  return false;
}

// [0, n) cut into `count` contiguous chunks, fixed by n and the thread count alone.
struct Chunks {
  int64_t n, count;
  Chunks(int64_t n_, int64_t count_) : n(n_), count(count_) {}
  explicit Chunks(int64_t n_)
      : Chunks(n_, std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_ / kMinChunk))) {}
  int64_t begin(int64_t c) const { return c * n / count; }
  int64_t end(int64_t c) const { return (c + 1) * n / count; }
};

// Every (index, value) for index in [0, n), ascending.
template <typename KeyFn>
struct AllValues {
  int64_t n;
  const KeyFn& key;
  template <typename Fn>
  void for_each(const Fn& fn) const {
    for (int64_t i = 0; i < n; ++i) fn(i, key.value(i));
  }
};

// The (index, value) pairs kept by the filter pass, chunk after chunk: ascending.
struct KeptValues {
  std::vector<Kept> chunks;
  int64_t size() const {
    int64_t m = 0;
    for (const Kept& c : chunks) m += c.size;
    return m;
  }
  template <typename Fn>
  void for_each(const Fn& fn) const {
    for (const Kept& c : chunks) {
      for (int64_t j = 0; j < c.size; ++j) fn(c.index[j], c.value[j]);
    }
  }
};

// The k (index, value) pairs of largest |value| among `pairs` (0 < k < their
// count), ties to the lowest index, into out_index (ascending) and out_value. Radix select over three digits of the key (11, 11,
// 10 bits, high first): a pass over all pairs histograms the top digit; the
// keys of the k-th key's top-digit bin are gathered and their two lower digits
// fix the k-th key T; a last pass takes every key above T and the
// lowest-indexed keys equal to T.
template <typename Pairs>
void radix_select(const Pairs& pairs, int64_t k, int64_t* out_index, float* out_value) {
  // Four interleaved histograms: the kept keys crowd into few bins, and one counter per
  // bin would serialise its increments.
  std::vector<std::array<int64_t, 2048>> partial(4, std::array<int64_t, 2048>{});
  int64_t seen = 0;
  pairs.for_each([&](int64_t, float v) { ++partial[seen++ & 3][abs_key(v) >> 21]; });
  std::array<int64_t, 2048> hist{};
  for (int d = 0; d < 2048; ++d) hist[d] = partial[0][d] + partial[1][d] + partial[2][d] + partial[3][d];
  int64_t needed = k;  // among the keys that match the prefix found so far
  uint32_t top = 2047;
  while (hist[top] < needed) needed -= hist[top--];
  std::vector<uint32_t> bin(hist[top]);
  int64_t filled = 0;
  pairs.for_each([&](int64_t, float v) {
    if ((abs_key(v) >> 21) == top) bin[filled++] = abs_key(v);
  });
  uint32_t threshold = top << 21;
  for (const int shift : {10, 0}) {
    const uint32_t digit_mask = shift == 0 ? 0x3ffu : 0x7ffu;
    const uint32_t prefix_mask = ~((digit_mask << shift) | ((1u << shift) - 1u));
    hist.fill(0);
    for (const uint32_t key : bin) {
      if ((key & prefix_mask) == threshold) ++hist[(key >> shift) & digit_mask];
    }
    uint32_t digit = digit_mask;
    while (hist[digit] < needed) needed -= hist[digit--];
    threshold |= digit << shift;
  }
  int64_t j = 0;  // `needed` keys equal to the threshold are taken, lowest index first
  pairs.for_each([&](int64_t index, float v) {
    const uint32_t key = abs_key(v);
    if (key > threshold || (key == threshold && needed-- > 0)) {
      out_index[j] = index;
      out_value[j++] = v;
    }
  });
  TORCH_INTERNAL_ASSERT(j == k, "radix_select took ", j, " keys instead of ", k);
}

// Lower bound on the k-th largest key from a sample of kSampleRuns runs of
// kRunLength consecutive keys, evenly spaced (run r starts at r * n / runs),
// with a margin of 3 standard deviations of the sampled rank (+8) so that it
// rarely overshoots. Returns 0 (keep everything) when the sample is too small.
template <typename KeyFn>
uint32_t sampled_lower_bound(int64_t n, int64_t k, const KeyFn& key) {
  const int64_t runs = std::min<int64_t>(kSampleRuns, n / (8 * kRunLength));
  std::vector<uint32_t> sample;
  sample.reserve(runs * kRunLength);
  for (int64_t r = 0; r < runs; ++r) {
    for (int64_t i = r * n / runs, e = i + kRunLength; i < e; ++i) sample.push_back(key(i));
  }
  const int64_t s = static_cast<int64_t>(sample.size());
  const double expected = static_cast<double>(k) * s / n;
  const int64_t rank = static_cast<int64_t>(expected + 3.0 * std::sqrt(expected) + 8.0);
  if (rank >= s) return 0;
  std::nth_element(sample.begin(), sample.begin() + rank, sample.end(), std::greater<uint32_t>());
  return sample[rank];
}

// Exact top-k of |key.value(i)|, i in [0, n): ascending indices into out_index,
// their values into out_value. One parallel pass keeps the (index, value)
// pairs whose key reaches the sampled
// lower bound (AVX2 where the CPU has it); the radix select finishes on them.
// If fewer than k survive (the sample was not representative), the radix
// select runs over all n keys instead.
template <typename KeyFn>
void select_topk(int64_t n, int64_t k, const KeyFn& key, int64_t* out_index, float* out_value) {
  if (k == 0) return;
  if (k == n) {
    std::iota(out_index, out_index + n, int64_t{0});
    for (int64_t i = 0; i < n; ++i) out_value[i] = key.value(i);
    return;
  }
  const AllValues<KeyFn> all{n, key};
  if (n <= kSmallInput) return radix_select(all, k, out_index, out_value);
  const int32_t bound = static_cast<int32_t>(sampled_lower_bound(n, k, key));
  const Chunks chunks(n);
  KeptValues kept{std::vector<Kept>(chunks.count)};
  at::parallel_for(0, chunks.count, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = chunks.begin(c), end = chunks.end(c);
      kept.chunks[c].reserve(2 * (end - begin) * k / n + 64);  // pages are touched only as used
      if (!keep_at_least_fast(key, begin, end, bound, kept.chunks[c])) {
        keep_at_least(key, begin, end, bound, kept.chunks[c]);
      }
    }
  });
  if (kept.size() < k) return radix_select(all, k, out_index, out_value);
  radix_select(kept, k, out_index, out_value);
}

std::tuple<at::Tensor, at::Tensor> topk_abs_cpu(const at::Tensor& x, int64_t k) {
  check_topk_abs(x, k);
  const at::Tensor flat = x.contiguous().view(-1);
  const int64_t n = flat.numel();
  at::Tensor indices = at::empty({k}, x.options().dtype(at::kLong));
  at::Tensor values = at::empty({k}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "topk_abs", [&] {
    select_topk(n, k, AbsKey<scalar_t>{flat.const_data_ptr<scalar_t>()}, indices.mutable_data_ptr<int64_t>(),
                values.mutable_data_ptr<float>());
  });
  // fp32 values are x's own bits; a 16-bit value's round trip through fp32 would quiet a signalling NaN.
  return {x.scalar_type() == at::kFloat ? values : flat.index_select(0, indices), indices};
}

std::tuple<at::Tensor, at::Tensor> ef21_topk_step_cpu(const at::Tensor& grad, at::Tensor h, int64_t k) {
  check_ef21_topk_step(grad, h, k);
  const at::Tensor flat = grad.contiguous().view(-1);
  const int64_t n = flat.numel();
  at::Tensor indices = at::empty({k}, h.options().dtype(at::kLong));
  at::Tensor values = at::empty({k}, h.options());
  int64_t* idx = indices.mutable_data_ptr<int64_t>();
  float* val = values.mutable_data_ptr<float>();
  float* est = h.mutable_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ef21_topk_step", [&] {
    select_topk(n, k, DiffKey<scalar_t>{flat.const_data_ptr<scalar_t>(), est}, idx, val);
  });
  at::parallel_for(0, k, kMinChunk / 4, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) est[idx[j]] += val[j];  // indices are distinct
  });
  return {values, indices};
}

template <typename index_t>
void accumulate(float* out, int64_t n, const float* val, const index_t* idx, int64_t m, float alpha) {
  // Each block of `out` is owned by one task, which applies the entries that
  // fall into it in input order: every coordinate sums in rank order.
  const Chunks blocks = m >= kMinChunk ? Chunks(n) : Chunks(n, 1);
  at::parallel_for(0, blocks.count, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = blocks.begin(b), hi = blocks.end(b);
      for (int64_t j = 0; j < m; ++j) {
        if (idx[j] >= lo && idx[j] < hi) out[idx[j]] += alpha * val[j];
      }
    }
  });
}

void sparse_accumulate_cpu(at::Tensor out, const at::Tensor& values, const at::Tensor& indices, double alpha) {
  check_sparse_accumulate(out, values, indices, alpha);
  const at::Tensor val = values.to(at::kFloat).contiguous().view(-1);
  const at::Tensor idx = indices.contiguous().view(-1);
  float* dst = out.mutable_data_ptr<float>();
  const float a = static_cast<float>(alpha);
  if (idx.scalar_type() == at::kLong) {
    accumulate(dst, out.numel(), val.const_data_ptr<float>(), idx.const_data_ptr<int64_t>(), idx.numel(), a);
  } else {
    accumulate(dst, out.numel(), val.const_data_ptr<float>(), idx.const_data_ptr<int32_t>(), idx.numel(), a);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("topk_abs", &topk_abs_cpu);
  m.impl("ef21_topk_step", &ef21_topk_step_cpu);
  m.impl("sparse_accumulate", &sparse_accumulate_cpu);
}

}  // namespace threepc
