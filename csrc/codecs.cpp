// CPU kernels of CO3's codecs: float_encode/decode/accumulate (low-precision float
// conversion, the arithmetic in float_codes.h), packed_encode/accumulate (a
// Top-K support and its values in 8-bit floats, PackedTopK) and
// huffman_encode/decode (canonical prefix codes, <= 16 bits). The specification is
// compressors/kernels/reference.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include <endian.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "float_codes.h"
#include "op_checks.h"

namespace threepc {
namespace {

constexpr int64_t kGrain = 1 << 15;

// Round to nearest over fp32 input with AVX2, 32 values per iteration, in a formulation with
// fewer operations than encode_nearest (same codes; tests/test_codecs.py holds both to the
// reference). With a = |v / scale|:
//   * target normals (a >= 2^(1 - bias)): round a's fp32 bits at mantissa bit 23 - m, ties to
//     even (the carry runs into the exponent), shift and rebias the exponent field; with m = 0
//     the kept significand is the implicit 1, which is odd, so ties round up;
//   * target subnormals: a + c with c = 2^(24 - bias - m), whose ulp is the target's spacing
//     2^(1 - bias - m), so the fp32 addition rounds a (ties to even); bits(a + c) - bits(c)
//     counts the spacings.
// Then saturate, put the sign at bit e + m, and map -0 to code 0.
#if defined(__x86_64__)
__attribute__((target("avx2"))) uint32_t encode_nearest_avx2(const float* v, uint8_t* out, int64_t begin,
                                                             int64_t end, FloatFormat f) {
  const int shift = 23 - f.mantissa;
  const float c = std::ldexp(1.0f, 24 - f.bias - f.mantissa);
  const __m256 scale = _mm256_set1_ps(f.scale), magic = _mm256_set1_ps(c);
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF), exponent_mask = _mm256_set1_epi32(0x7F800000);
  const __m256i magic_bits = _mm256_set1_epi32(int32_t(float_bits(c)));
  const __m256i min_normal = _mm256_set1_epi32(int32_t(float_bits(std::ldexp(1.0f, 1 - f.bias))));
  const __m256i round_bias = _mm256_set1_epi32((1 << (shift - 1)) - 1), one = _mm256_set1_epi32(1);
  const __m256i odd = _mm256_set1_epi32(f.mantissa == 0 ? 1 : 0);
  const __m256i rebias = _mm256_set1_epi32((127 - f.bias) << f.mantissa);
  const __m256i max_magnitude = _mm256_set1_epi32(int32_t(f.max_magnitude())), zero = _mm256_setzero_si256();
  const __m128i mantissa_shift = _mm_cvtsi32_si128(shift);
  const __m128i sign_shift = _mm_cvtsi32_si128(31 - (f.exponent + f.mantissa));
  const __m256i interleave = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i bad = zero;
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    __m256i code[4];
    for (int j = 0; j < 4; ++j) {
      const __m256i bits = _mm256_castps_si256(_mm256_div_ps(_mm256_loadu_ps(v + i + 8 * j), scale));
      bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(bits, exponent_mask), exponent_mask));
      const __m256i a = _mm256_and_si256(bits, abs_mask);
      const __m256i sub =
          _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), magic)), magic_bits);
      const __m256i lsb = _mm256_or_si256(_mm256_and_si256(_mm256_srl_epi32(a, mantissa_shift), one), odd);
      const __m256i normal = _mm256_sub_epi32(
          _mm256_srl_epi32(_mm256_add_epi32(_mm256_add_epi32(a, round_bias), lsb), mantissa_shift), rebias);
      const __m256i magnitude =
          _mm256_min_epu32(_mm256_blendv_epi8(normal, sub, _mm256_cmpgt_epi32(min_normal, a)), max_magnitude);
      const __m256i sign = _mm256_srl_epi32(_mm256_andnot_si256(abs_mask, bits), sign_shift);
      code[j] = _mm256_andnot_si256(_mm256_cmpeq_epi32(magnitude, zero), _mm256_or_si256(sign, magnitude));
    }
    // Packing works per 128-bit lane: the bytes come out as dwords c0[0:4] c1[0:4] c2[0:4] c3[0:4]
    // c0[4:8] c1[4:8] c2[4:8] c3[4:8]; one permutation restores the order.
    const __m256i packed = _mm256_packus_epi16(_mm256_packus_epi32(code[0], code[1]), _mm256_packus_epi32(code[2], code[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permutevar8x32_epi32(packed, interleave));
  }
  uint32_t tail_bad = 0;
  for (; i < end; ++i) {
    const float x = v[i] / f.scale;
    tail_bad |= uint32_t(non_finite(x));
    out[i] = encode_nearest(x, f);
  }
  return tail_bad | uint32_t(!_mm256_testz_si256(bad, bad));
}
#endif

template <typename scalar_t>
bool encode_range(const scalar_t* v, uint8_t* out, int64_t begin, int64_t end, const FloatFormat& f, int64_t seed) {
  uint32_t bad = 0;
#if defined(__x86_64__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    static const bool has_avx2 = __builtin_cpu_supports("avx2");
    if (seed < 0 && has_avx2) return encode_nearest_avx2(v, out, begin, end, f) != 0;
  }
#endif
  if (seed < 0) {
    for (int64_t i = begin; i < end; ++i) {
      const float x = static_cast<float>(v[i]) / f.scale;
      bad |= uint32_t(non_finite(x));
      out[i] = encode_nearest(x, f);
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      const float x = static_cast<float>(v[i]) / f.scale;
      bad |= uint32_t(non_finite(x));
      out[i] = encode_stochastic(x, element_noise(seed, i), f);
    }
  }
  return bad != 0;
}

void float_encode_out_cpu(const at::Tensor& v, int64_t exponent, int64_t mantissa, int64_t bias, double scale,
                          int64_t seed, const at::Tensor& codes) {
  check_float_encode(v, exponent, mantissa, bias, scale);
  check_out("float_encode", codes, v, at::kByte, "uint8");
  const at::Tensor input = v.contiguous();
  const FloatFormat f{int(exponent), int(mantissa), int(bias), float(scale)};
  std::atomic<bool> any_non_finite{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "float_encode", [&] {
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    uint8_t* dst = codes.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, input.numel(), kGrain, [&](int64_t begin, int64_t end) {
      if (encode_range(src, dst, begin, end, f, seed)) any_non_finite = true;
    });
  });
  TORCH_CHECK_VALUE(!any_non_finite, kNonFiniteMessage);
}

at::Tensor float_encode_cpu(const at::Tensor& v, int64_t exponent, int64_t mantissa, int64_t bias, double scale,
                            int64_t seed) {
  at::Tensor codes = at::empty({v.numel()}, v.options().dtype(at::kByte));
  float_encode_out_cpu(v, exponent, mantissa, bias, scale, seed, codes);
  return codes;
}

// Table lookups with AVX2 gathers, 32 codes per iteration: dst = table[code] (decode), or
// dst += table[code] (kAdd: float_accumulate, whose table holds (value * scale) * alpha).
#if defined(__x86_64__)
template <bool kAdd>
__attribute__((target("avx2"))) inline void store(float* at, __m256 looked_up) {
  _mm256_storeu_ps(at, kAdd ? _mm256_add_ps(_mm256_loadu_ps(at), looked_up) : looked_up);
}

template <bool kAdd>
__attribute__((target("avx2"))) void lookup_avx2(const uint8_t* src, float* dst, int64_t begin, int64_t end,
                                                 const float* table) {
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m128i halves[2] = {_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1)};
    for (int h = 0; h < 2; ++h) {
      const __m256i low = _mm256_cvtepu8_epi32(halves[h]), high = _mm256_cvtepu8_epi32(_mm_srli_si128(halves[h], 8));
      store<kAdd>(dst + i + 16 * h, _mm256_i32gather_ps(table, low, 4));
      store<kAdd>(dst + i + 16 * h + 8, _mm256_i32gather_ps(table, high, 4));
    }
  }
  for (; i < end; ++i) dst[i] = kAdd ? dst[i] + table[src[i]] : table[src[i]];
}
#endif

// dst[i] = table[codes[i]] (or += with kAdd) over the codes, in parallel chunks.
template <bool kAdd>
void lookup(const at::Tensor& codes, float* dst, const std::array<float, 256>& table) {
  const at::Tensor input = codes.contiguous();
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  at::parallel_for(0, input.numel(), kGrain, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    static const bool has_avx2 = __builtin_cpu_supports("avx2");
    if (has_avx2) return lookup_avx2<kAdd>(src, dst, begin, end, table.data());
#endif
    for (int64_t i = begin; i < end; ++i) dst[i] = kAdd ? dst[i] + table[src[i]] : table[src[i]];
  });
}

void float_decode_out_cpu(const at::Tensor& codes, int64_t exponent, int64_t mantissa, int64_t bias, double scale,
                          const at::Tensor& out) {
  check_float_decode(codes, exponent, mantissa, bias, scale);
  check_out("float_decode", out, codes, at::kFloat, "float32");
  lookup<false>(codes, out.mutable_data_ptr<float>(), decode_table(int(exponent), int(mantissa), int(bias), float(scale)));
}

at::Tensor float_decode_cpu(const at::Tensor& codes, int64_t exponent, int64_t mantissa, int64_t bias, double scale) {
  at::Tensor out = at::empty({codes.numel()}, codes.options().dtype(at::kFloat));
  float_decode_out_cpu(codes, exponent, mantissa, bias, scale, out);
  return out;
}

void float_accumulate_cpu(at::Tensor out, const at::Tensor& codes, int64_t exponent, int64_t mantissa, int64_t bias,
                          double scale, double alpha) {
  check_float_accumulate(out, codes, exponent, mantissa, bias, scale, alpha);
  lookup<true>(codes, out.mutable_data_ptr<float>(),
               accumulate_table(int(exponent), int(mantissa), int(bias), float(scale), float(alpha)));
}

// -- Top-K packed in 16 bits an entry -------------------------------------------------------
// packed_encode: one pass for max |v| (and whether a value is not finite), the scale
// (float_codes.h), the codes with float_encode's loop, one pass over the ascending indices for
// the block counts and offsets. packed_accumulate walks out in tiles (kTileFloats) and, in each, adds
// every payload's entries (rank order) times alpha, looked up in a 256-entry table of the payload's scale.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> packed_encode_cpu(const at::Tensor& values,
                                                                            const at::Tensor& indices, int64_t numel,
                                                                            int64_t block, int64_t exponent,
                                                                            int64_t mantissa, int64_t bias) {
  check_packed_encode(values, indices, numel, block, exponent, mantissa, bias);
  const at::Tensor v = values.reshape(-1).to(at::kFloat).contiguous();
  const at::Tensor index = indices.reshape(-1).to(at::kLong).contiguous();
  const int64_t k = v.numel();
  const auto bytes = v.options().dtype(at::kByte);
  at::Tensor codes = at::empty({k}, bytes), offsets = at::empty({k}, bytes);
  at::Tensor counts = at::zeros({packed_blocks(numel, block)}, bytes);
  at::Tensor scale = at::empty({1}, v.options());
  const float* src = v.const_data_ptr<float>();
  float top = 0.0f;
  bool bad = false;
  for (int64_t j = 0; j < k; ++j) {
    const float a = std::fabs(src[j]);
    bad |= non_finite(a);
    top = a > top ? a : top;
  }
  FloatFormat f{int(exponent), int(mantissa), int(bias), 1.0f};
  f.scale = packed_scale(bad ? std::numeric_limits<float>::infinity() : top, max_value(f.exponent, f.mantissa, f.bias));
  scale.data_ptr<float>()[0] = f.scale;
  uint8_t* code = codes.data_ptr<uint8_t>();
  if (std::isnan(f.scale)) {
    std::memset(code, 0, size_t(k));
  } else {
    encode_range(src, code, 0, k, f, -1);
  }
  const int64_t* at_index = index.const_data_ptr<int64_t>();
  uint8_t *count = counts.data_ptr<uint8_t>(), *offset = offsets.data_ptr<uint8_t>();
  for (int64_t j = 0; j < k; ++j) {
    const int64_t b = at_index[j] / block;
    ++count[b];
    offset[j] = uint8_t(at_index[j] - b * block);
  }
  return {codes, scale, counts, offsets};
}

constexpr int64_t kTileFloats = 1 << 13;  // 32 KB of out: packed_accumulate's tile, which stays in cache

void packed_accumulate_cpu(at::Tensor out, at::TensorList codes, at::TensorList scales, at::TensorList counts,
                           at::TensorList offsets, int64_t block, int64_t exponent, int64_t mantissa, int64_t bias,
                           double alpha) {
  check_packed_accumulate(out, codes, scales, counts, offsets, block, exponent, mantissa, bias);
  const size_t payloads = codes.size();
  if (payloads == 0) return;
  float* dst = out.data_ptr<float>();
  const float factor = static_cast<float>(alpha);
  std::vector<at::Tensor> code(payloads), count(payloads), offset(payloads);
  std::vector<std::array<float, 256>> table(payloads);
  int64_t entries = 0;
  for (size_t r = 0; r < payloads; ++r) {
    code[r] = codes[r].contiguous();
    count[r] = counts[r].contiguous();
    offset[r] = offsets[r].contiguous();
    table[r] = decode_table(int(exponent), int(mantissa), int(bias), scales[r].item<float>());
    entries += code[r].numel();
  }
  // Each task owns a range of blocks and applies every payload's entries there, payload after
  // payload: every coordinate sums in payload (rank) order, as one sequential pass would. A task's
  // first entry in each payload is the payload's count of entries in the blocks before its range.
  const int64_t blocks = count[0].numel();
  const int64_t tasks = entries >= kGrain ? std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks)) : 1;
  std::vector<int64_t> first(tasks * payloads);  // first[t * payloads + r]
  for (size_t r = 0; r < payloads; ++r) {
    const uint8_t* n = count[r].const_data_ptr<uint8_t>();
    int64_t j = 0, b = 0;
    for (int64_t t = 0; t < tasks; ++t) {
      for (const int64_t begin = t * blocks / tasks; b < begin; ++b) j += n[b];
      first[t * payloads + r] = j;
    }
  }
  std::vector<const uint8_t*> c(payloads), n(payloads), o(payloads);
  for (size_t r = 0; r < payloads; ++r) {
    c[r] = code[r].const_data_ptr<uint8_t>();
    n[r] = count[r].const_data_ptr<uint8_t>();
    o[r] = offset[r].const_data_ptr<uint8_t>();
  }
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int64_t> j(payloads);  // each payload's next entry
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t begin = t * blocks / tasks, end = (t + 1) * blocks / tasks;
      std::copy_n(first.begin() + t * payloads, payloads, j.begin());
      // Tile by tile (kTileFloats of out), every payload's entries in the tile: the tile stays in
      // cache across the payloads, so an out larger than the cache is streamed once, not once a
      // payload, and each payload is still read in runs of a tile's entries.
      const int64_t tile = std::max<int64_t>(1, kTileFloats / block);
      for (int64_t lo = begin; lo < end; lo += tile) {
        const int64_t hi = std::min(end, lo + tile);
        for (size_t r = 0; r < payloads; ++r) {
          const uint8_t *cr = c[r], *nr = n[r], *orr = o[r];
          const std::array<float, 256>& values = table[r];
          int64_t k = j[r];
          for (int64_t b = lo; b < hi; ++b) {
            float* base = dst + b * block;
            for (const int64_t stop = k + nr[b]; k < stop; ++k) base[orr[k]] += factor * values[cr[k]];
          }
          j[r] = k;
        }
      }
    }
  });
}

// -- Huffman --------------------------------------------------------------------------------
// The stream is the codewords' bits, most significant first, in big-endian bytes; the last
// byte is zero padded. Both loops are branch free in their common path: the encoder adds two
// codewords at a time, stores a 32-bit word every time and advances only when it is full; the
// decoder reads 64-bit windows and resolves up to two symbols per lookup of the next 12 bits.
constexpr int kPairBits = 12;
constexpr int64_t kPairTableMin = 1 << 18;  // symbols from which the encoder's 65536-entry pair table pays

inline void store_be32(uint8_t* p, uint32_t word) {
  word = __builtin_bswap32(word);
  std::memcpy(p, &word, sizeof(word));
}

inline uint64_t load_be64(const uint8_t* p) {
  uint64_t word;
  std::memcpy(&word, p, sizeof(word));
  return __builtin_bswap64(word);
}

// (codes << 8 | length) of two codewords (code << 8 | length each) written one after the other;
// bit 63 flags a symbol without a codeword.
inline uint64_t join(uint32_t first, uint32_t second) {
  const uint32_t l1 = first & 0xFFu, l2 = second & 0xFFu;
  const uint64_t missing = uint64_t((l1 == 0) | (l2 == 0)) << 63;
  return missing | ((uint64_t(first >> 8) << l2 | (second >> 8)) << 8) | (l1 + l2);
}

at::Tensor huffman_encode_cpu(const at::Tensor& symbols, const at::Tensor& codes, const at::Tensor& lengths) {
  check_huffman_encode(symbols, codes, lengths);
  const at::Tensor input = symbols.contiguous();
  const at::Tensor code_t = codes.contiguous(), length_t = lengths.contiguous();
  std::array<uint32_t, 256> entry{};  // code << 8 | length
  uint32_t longest = 0;
  for (int64_t s = 0; s < codes.numel(); ++s) {
    const uint32_t length = length_t.const_data_ptr<uint8_t>()[s];
    entry[s] = (uint32_t(code_t.const_data_ptr<int32_t>()[s]) << 8) | length;
    longest = std::max(longest, length);
  }
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  const int64_t n = input.numel();
  // Room for the longest possible stream plus the 4-byte stores' slack; only written pages are touched.
  at::Tensor out = at::empty({(n * longest + 7) / 8 + 8}, input.options());
  uint8_t* const begin = out.mutable_data_ptr<uint8_t>();
  uint8_t* dst = begin;
  uint64_t acc = 0, missing = 0;  // missing: bit 63 set by a symbol without a codeword
  uint32_t bits = 0;               // valid low bits in acc, < 32 between pairs
  // Two codewords (<= 32 bits) joined per 32-bit flush: acc never holds more than 63 valid bits.
  auto put = [&](uint64_t pair) {
    missing |= pair;
    const uint32_t length = uint32_t(pair) & 0xFFu;
    acc = (acc << length) | ((pair >> 8) & 0xFFFFFFFFu);
    bits += length;
    const uint32_t full = bits >> 5;
    bits &= 31u;
    store_be32(dst, uint32_t(acc >> bits));
    dst += full << 2;
  };
  if (n >= kPairTableMin) {  // one lookup per pair in a table of every (byte, byte), indexed little-endian
    std::vector<uint64_t> pairs(1 << 16);
    for (uint32_t second = 0; second < 256; ++second) {
      for (uint32_t first = 0; first < 256; ++first) pairs[second << 8 | first] = join(entry[first], entry[second]);
    }
    for (int64_t i = 0; i + 1 < n; i += 2) {
      uint16_t two;
      std::memcpy(&two, src + i, sizeof(two));
      put(pairs[le16toh(two)]);
    }
  } else {
    for (int64_t i = 0; i + 1 < n; i += 2) put(join(entry[src[i]], entry[src[i + 1]]));
  }
  if (n & 1) {
    const uint32_t last = entry[src[n - 1]];
    missing |= uint64_t((last & 0xFFu) == 0) << 63;
    acc = (acc << (last & 0xFFu)) | (last >> 8);
    bits += last & 0xFFu;
  }
  TORCH_CHECK_VALUE(!(missing >> 63), kNoCodewordMessage);
  for (; bits >= 8; bits -= 8) *dst++ = uint8_t(acc >> (bits - 8));
  if (bits > 0) *dst++ = uint8_t(acc << (8 - bits));
  return out.narrow(0, 0, dst - begin);
}

// The symbol and length of every 16-bit prefix: (length << 8) | symbol, 0 where no codeword starts.
std::vector<uint16_t> prefix_table(const at::Tensor& codes, const at::Tensor& lengths) {
  std::vector<uint16_t> lut(1 << kMaxCodeLength, 0);
  const at::Tensor code_t = codes.contiguous(), length_t = lengths.contiguous();
  const int32_t* code = code_t.const_data_ptr<int32_t>();
  const uint8_t* length = length_t.const_data_ptr<uint8_t>();
  // Shortest codewords first (a counting sort by length): codeword intervals are dyadic, so a later
  // one that overlaps an earlier one lies inside it, and its first entry is filled already.
  std::array<int64_t, kMaxCodeLength + 2> at{};
  for (int64_t s = 0; s < codes.numel(); ++s) ++at[length[s] + 1];
  for (int l = 1; l <= kMaxCodeLength + 1; ++l) at[l] += at[l - 1];
  std::vector<int64_t> order(codes.numel());
  for (int64_t s = 0; s < codes.numel(); ++s) order[at[length[s]]++] = s;
  for (const int64_t s : order) {
    const int l = length[s];
    if (l == 0) continue;
    const uint32_t first = uint32_t(code[s]) << (kMaxCodeLength - l);
    TORCH_CHECK_VALUE(lut[first] == 0, kOverlapMessage);  // prefix-free
    std::fill(lut.begin() + first, lut.begin() + first + (1u << (kMaxCodeLength - l)), uint16_t((l << 8) | s));
  }
  return lut;
}

// For every 12-bit prefix: the one or two whole codewords it starts with, as
// s1 | s2 << 8 | bits << 16 | count << 24; count 0 where the first codeword is longer than 12 bits.
std::vector<uint32_t> pair_table(const std::vector<uint16_t>& lut) {
  std::vector<uint32_t> pairs(1 << kPairBits, 0);
  constexpr int kRest = kMaxCodeLength - kPairBits;
  for (uint32_t p = 0; p < pairs.size(); ++p) {
    const uint16_t first = lut[p << kRest];
    const uint32_t l1 = first >> 8;
    if (l1 == 0 || l1 > uint32_t(kPairBits)) continue;
    pairs[p] = (first & 0xFFu) | (l1 << 16) | (1u << 24);
    const uint16_t second = lut[((p << l1) & ((1u << kPairBits) - 1)) << kRest];
    const uint32_t l2 = second >> 8;
    if (l2 != 0 && l1 + l2 <= uint32_t(kPairBits)) pairs[p] = (first & 0xFFu) | ((second & 0xFFu) << 8) | ((l1 + l2) << 16) | (2u << 24);
  }
  return pairs;
}

at::Tensor huffman_decode_cpu(const at::Tensor& stream, int64_t n, const at::Tensor& codes, const at::Tensor& lengths) {
  check_huffman_decode(stream, n, codes, lengths);
  const std::vector<uint16_t> lut = prefix_table(codes, lengths);
  const std::vector<uint32_t> pairs = pair_table(lut);
  const at::Tensor input = stream.contiguous();
  const uint8_t* src = input.const_data_ptr<uint8_t>();
  const int64_t nbytes = input.numel();
  at::Tensor out = at::empty({n}, input.options());
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  int64_t i = 0, bitpos = 0;
  bool corrupt = false;
  // Fast path: a 64-bit window holds >= 57 unread bits, enough for three codewords of <= 16 bits.
  while (i + 6 <= n && (bitpos >> 3) + 8 <= nbytes) {
    uint64_t window = load_be64(src + (bitpos >> 3)) << (bitpos & 7);
    for (int k = 0; k < 3; ++k) {
      uint32_t entry = pairs[window >> (64 - kPairBits)];
      if ((entry >> 24) == 0) {  // a codeword longer than 12 bits
        const uint16_t e = lut[window >> (64 - kMaxCodeLength)];
        corrupt |= e == 0;
        entry = (e & 0xFFu) | (uint32_t(e >> 8) << 16) | (1u << 24);
      }
      dst[i] = uint8_t(entry);
      dst[i + 1] = uint8_t(entry >> 8);
      const uint32_t used = (entry >> 16) & 0xFFu;
      i += entry >> 24;
      window <<= used;
      bitpos += used;
    }
    TORCH_CHECK_VALUE(!corrupt, kCorruptStreamMessage);
  }
  // Tail: one byte at a time.
  const int64_t total_bits = nbytes * 8;
  for (; i < n; ++i) {
    uint32_t peek = 0;
    for (int64_t b = bitpos; b < bitpos + kMaxCodeLength && b < total_bits; ++b) {
      peek |= uint32_t((src[b >> 3] >> (7 - (b & 7))) & 1u) << (kMaxCodeLength - 1 - (b - bitpos));
    }
    const uint16_t entry = lut[peek];
    const int64_t l = entry >> 8;
    TORCH_CHECK_VALUE(l != 0 && bitpos + l <= total_bits, kCorruptStreamMessage);
    dst[i] = uint8_t(entry);
    bitpos += l;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(threepc, CPU, m) {
  m.impl("float_encode", &float_encode_cpu);
  m.impl("float_decode", &float_decode_cpu);
  m.impl("float_encode.out", &float_encode_out_cpu);
  m.impl("float_decode.out", &float_decode_out_cpu);
  m.impl("float_accumulate", &float_accumulate_cpu);
  m.impl("packed_encode", &packed_encode_cpu);
  m.impl("packed_accumulate", &packed_accumulate_cpu);
  m.impl("huffman_encode", &huffman_encode_cpu);
  m.impl("huffman_decode", &huffman_decode_cpu);
}

}  // namespace threepc
