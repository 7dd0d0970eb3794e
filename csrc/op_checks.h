// Argument checks of every op, one function per op, shared by the CPU and CUDA kernels: both
// raise the same error before touching any memory. TORCH_CHECK_TYPE/VALUE/INDEX reach Python as
// TypeError/ValueError/IndexError. The Python implementations raise the same errors
// (compressors/kernels/checks.py); keep the two in step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

namespace threepc {

inline constexpr int kMaxCodeLength = 16;  // Huffman codewords

inline constexpr const char* kNonFiniteMessage =
    "float_encode got NaN or Inf values; the float formats have no codes for them. "
    "Check the gradients (loss scaling, a diverged step) before compressing";

// A dtype as Python prints it (torch.float16, not Half): the extension's messages read as the
// Python backends' (compressors/kernels/checks.py).
inline std::string py_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline void check_k(const char* op, int64_t k, int64_t n) {
  TORCH_CHECK_VALUE(k >= 0 && k <= n, op, ": k must lie in [0, numel] = [0, ", n, "], got k = ", k);
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", py_dtype(dt), "; cast it with .float()");
}

// Bytes from a tensor's first element to the end of its last, whatever its strides.
inline int64_t byte_span(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * std::abs(t.stride(d));
  return (last + 1) * static_cast<int64_t>(t.element_size());
}

// A kernel that writes `out` while it reads `input` needs them apart: it may write an entry of out
// before it reads the input bytes stored there (float_decode's table lookup writes 32 floats at a
// time). Apart: their byte spans on one device do not meet, whatever storages hold them
// (checks.apart alike).
inline void check_apart(const char* op, const char* out_name, const at::Tensor& out, const char* name,
                        const at::Tensor& input) {
  if (out.numel() == 0 || input.numel() == 0 || out.device() != input.device()) return;
  const auto lo_out = static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(out.const_data_ptr()));
  const auto lo_in = static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(input.const_data_ptr()));
  TORCH_CHECK_VALUE(lo_out >= lo_in + byte_span(input) || lo_in >= lo_out + byte_span(out), op, ": ", out_name,
                    " shares memory with ", name, ", which the kernel reads while it writes ", out_name,
                    "; pass a separate buffer (", name, ".clone())");
}

inline void check_topk_abs(const at::Tensor& x, int64_t k) {
  check_floating("topk_abs", "x", x);
  check_k("topk_abs", k, x.numel());
}

inline void check_ef21_topk_step(const at::Tensor& grad, const at::Tensor& h, int64_t k) {
  check_floating("ef21_topk_step", "grad", grad);
  TORCH_CHECK_TYPE(h.scalar_type() == at::kFloat && h.is_contiguous(),
                   "ef21_topk_step: h must be a contiguous float32 tensor (the fp32 estimate, updated in place), "
                   "got ", py_dtype(h.scalar_type()), h.is_contiguous() ? "" : ", non-contiguous",
                   "; keep the estimate as one contiguous float32 tensor");
  TORCH_CHECK_VALUE(grad.numel() == h.numel(), "ef21_topk_step: grad has ", grad.numel(), " elements but h has ",
                    h.numel());
  TORCH_CHECK_VALUE(grad.device() == h.device(), "ef21_topk_step: grad is on ", grad.device(), " but h on ",
                    h.device(), "; move them to one device");
  check_k("ef21_topk_step", k, h.numel());
  check_apart("ef21_topk_step", "h", h, "grad", grad);
}

// Scales and alphas are fp32 in the kernels: finite as an fp32, and a scale positive.
constexpr double kFp32Max = 3.4028234663852886e38;
constexpr double kFp32TrueMin = 1.401298464324817e-45;  // 2^-149

inline void check_alpha(const char* op, double alpha) {
  TORCH_CHECK_VALUE(std::abs(alpha) <= kFp32Max, op,
                    ": alpha must be finite as an fp32 (|alpha| <= 3.4e38: the kernels add in fp32), got ", alpha);
}

// Reads the indices' range back (a device synchronisation on CUDA): an index out of range
// raises IndexError here instead of writing out of bounds.
inline void check_sparse_accumulate(const at::Tensor& out, const at::Tensor& values, const at::Tensor& indices,
                                    double alpha) {
  check_alpha("sparse_accumulate", alpha);
  TORCH_CHECK_TYPE(out.scalar_type() == at::kFloat && out.is_contiguous(),
                   "sparse_accumulate: out must be a contiguous float32 tensor, got ", py_dtype(out.scalar_type()),
                   out.is_contiguous() ? "" : ", non-contiguous");
  TORCH_CHECK_VALUE(values.numel() == indices.numel(), "sparse_accumulate: values has ", values.numel(),
                    " elements but indices has ", indices.numel());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
                   "sparse_accumulate: indices must be int64 or int32, got ", py_dtype(indices.scalar_type()));
  TORCH_CHECK_VALUE(values.device() == out.device() && indices.device() == out.device(),
                    "sparse_accumulate: out, values and indices must be on one device, got ", out.device(), ", ",
                    values.device(), " and ", indices.device());
  check_apart("sparse_accumulate", "out", out, "values", values);
  check_apart("sparse_accumulate", "out", out, "indices", indices);
  if (indices.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(indices);
  const int64_t first = lo.item<int64_t>(), last = hi.item<int64_t>();
  TORCH_CHECK_INDEX(first >= 0 && last < out.numel(), "sparse_accumulate: indices must lie in [0, ", out.numel(),
                    "), got [", first, ", ", last, "]");
}

inline void check_format(int64_t exponent, int64_t mantissa, int64_t bias, double scale) {
  TORCH_CHECK_VALUE(exponent >= 1 && mantissa >= 0 && exponent + mantissa <= 7,
                    "float format [1, ", exponent, ", ", mantissa, "] needs exponent >= 1, mantissa >= 0 and "
                    "exponent + mantissa <= 7 (codes fit in one byte)");
  TORCH_CHECK_VALUE(bias >= -64 && bias <= 64, "float format bias must lie in [-64, 64], got ", bias);
  TORCH_CHECK_VALUE(scale >= kFp32TrueMin && scale <= kFp32Max,
                    "float format scale must be positive and finite as an fp32 (in [2^-149, 3.4e38]: the codecs "
                    "scale in fp32), got ", scale);
}

inline void check_float_encode(const at::Tensor& v, int64_t exponent, int64_t mantissa, int64_t bias, double scale) {
  check_floating("float_encode", "v", v);
  check_format(exponent, mantissa, bias, scale);
}

inline void check_float_decode(const at::Tensor& codes, int64_t exponent, int64_t mantissa, int64_t bias,
                               double scale) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, "float_decode: codes must be uint8, got ",
                   py_dtype(codes.scalar_type()));
  check_format(exponent, mantissa, bias, scale);
}

inline void check_float_accumulate(const at::Tensor& out, const at::Tensor& codes, int64_t exponent, int64_t mantissa,
                                   int64_t bias, double scale, double alpha) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, "float_accumulate: codes must be uint8, got ",
                   py_dtype(codes.scalar_type()));
  check_format(exponent, mantissa, bias, scale);
  check_alpha("float_accumulate", alpha);
  TORCH_CHECK_VALUE(out.scalar_type() == at::kFloat && out.is_contiguous() && out.numel() == codes.numel() &&
                        out.device() == codes.device(),
                    "float_accumulate: out must be a contiguous float32 tensor of ", codes.numel(),
                    " elements on ", codes.device(), " (one per code), got ", py_dtype(out.scalar_type()), " of ",
                    out.numel(), " elements on ", out.device(), out.is_contiguous() ? "" : ", non-contiguous");
  check_apart("float_accumulate", "out", out, "codes", codes);
}

// ``out`` of a float_encode/decode.out call: contiguous, of ``dtype`` (named ``dtype_name`` as in
// torch), as many elements as ``input`` and on its device.
inline void check_out(const char* op, const at::Tensor& out, const at::Tensor& input, at::ScalarType dtype,
                      const char* dtype_name) {
  TORCH_CHECK_VALUE(out.scalar_type() == dtype && out.is_contiguous() && out.numel() == input.numel() &&
                        out.device() == input.device(),
                    op, ": out must be a contiguous ", dtype_name, " tensor of ", input.numel(), " elements on ",
                    input.device(), ", got ", py_dtype(out.scalar_type()), " of ", out.numel(), " elements on ",
                    out.device(),
                    out.is_contiguous() ? "" : ", non-contiguous", "; allocate it with torch.empty(", input.numel(),
                    ", dtype=torch.", dtype_name, ")");
  check_apart(op, "out", out, dtype == at::kByte ? "v" : "codes", input);
}

// A Huffman table: codes int32[A], lengths uint8[A], A <= 256, every codeword of length
// 1..16 fits its length (length 0: the symbol has no codeword). Reads the table (host tensors).
inline void check_huffman_table(const char* op, const at::Tensor& codes, const at::Tensor& lengths) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kInt && lengths.scalar_type() == at::kByte && codes.dim() == 1 &&
                       codes.sizes() == lengths.sizes() && codes.numel() <= 256,
                   op, ": a Huffman table is (codes int32[A], lengths uint8[A]) with A <= 256 symbols; "
                   "build one with compressors.codecs.huffman.HuffmanTable");
  const at::Tensor code_t = codes.contiguous(), length_t = lengths.contiguous();
  const int32_t* code = code_t.const_data_ptr<int32_t>();
  const uint8_t* length = length_t.const_data_ptr<uint8_t>();
  for (int64_t s = 0; s < codes.numel(); ++s) {
    TORCH_CHECK_VALUE(length[s] <= kMaxCodeLength && (length[s] == 0 || uint32_t(code[s]) < (1u << length[s])),
                      op, ": symbol ", s, " has the invalid codeword ", code[s], " of length ", int(length[s]),
                      " (codewords have 1 to 16 bits); build the table with compressors.codecs.huffman.HuffmanTable");
  }
}

inline void check_huffman_encode(const at::Tensor& symbols, const at::Tensor& codes, const at::Tensor& lengths) {
  check_huffman_table("huffman_encode", codes, lengths);
  TORCH_CHECK_TYPE(symbols.scalar_type() == at::kByte, "huffman_encode: symbols must be uint8, got ",
                   py_dtype(symbols.scalar_type()));
}

inline constexpr const char* kNoCodewordMessage =
    "huffman_encode: a symbol has no codeword (length 0) in this table; build the table from weights that "
    "cover every symbol";

inline constexpr const char* kCorruptStreamMessage =
    "huffman_decode: the stream is corrupt or shorter than n symbols";
inline constexpr const char* kOverlapMessage =
    "huffman_decode: two codewords overlap (one is a prefix of the other; a Huffman code is prefix-free); build "
    "the table with compressors.codecs.huffman.HuffmanTable";

inline void check_huffman_decode(const at::Tensor& stream, int64_t n, const at::Tensor& codes,
                                 const at::Tensor& lengths) {
  check_huffman_table("huffman_decode", codes, lengths);
  TORCH_CHECK_TYPE(stream.scalar_type() == at::kByte, "huffman_decode: stream must be uint8, got ",
                   py_dtype(stream.scalar_type()));
  TORCH_CHECK_VALUE(n >= 0, "huffman_decode: n must be >= 0, got ", n);
  // every codeword has a bit at least: refused before n bytes are allocated
  TORCH_CHECK_VALUE(n <= 8 * stream.numel(), kCorruptStreamMessage);
}

// A rANS table: freqs int32[A], A <= 256, every entry >= 0, the sum a power of two 2^p with
// p <= 16. Returns p. Reads the table (host tensor).
inline constexpr int kRansMaxPrecision = 16;

inline int check_rans_table(const char* op, const at::Tensor& freqs) {
  TORCH_CHECK_TYPE(freqs.scalar_type() == at::kInt && freqs.dim() == 1 && freqs.numel() <= 256, op,
                   ": a rANS table is freqs int32[A] with A <= 256 symbols; build one with "
                   "compressors.codecs.rans.RansTable");
  const at::Tensor freq_t = freqs.contiguous();
  const int32_t* f = freq_t.const_data_ptr<int32_t>();
  int64_t total = 0;
  bool negative = false;
  for (int64_t s = 0; s < freqs.numel(); ++s) {
    negative |= f[s] < 0;
    total += f[s];
  }
  TORCH_CHECK_VALUE(!negative && total > 0 && (total & (total - 1)) == 0 && total <= (int64_t(1) << kRansMaxPrecision),
                    op, ": the frequencies must be >= 0 and sum to a power of two <= 2^", kRansMaxPrecision,
                    ", got sum ", total, "; build the table with compressors.codecs.rans.RansTable");
  return __builtin_ctzll(uint64_t(total));
}

inline int check_rans_encode(const at::Tensor& symbols, const at::Tensor& freqs) {
  const int precision = check_rans_table("rans_encode", freqs);
  TORCH_CHECK_TYPE(symbols.scalar_type() == at::kByte, "rans_encode: symbols must be uint8, got ",
                   py_dtype(symbols.scalar_type()));
  return precision;
}

inline constexpr const char* kNoFrequencyMessage =
    "rans_encode: a symbol has frequency 0 in this table; build the table from weights that cover every symbol";

inline int check_rans_decode(const at::Tensor& stream, int64_t n, const at::Tensor& freqs) {
  const int precision = check_rans_table("rans_decode", freqs);
  TORCH_CHECK_TYPE(stream.scalar_type() == at::kByte, "rans_decode: stream must be uint8, got ",
                   py_dtype(stream.scalar_type()));
  TORCH_CHECK_VALUE(n >= 0, "rans_decode: n must be >= 0, got ", n);
  return precision;
}

inline constexpr const char* kRansCorruptStreamMessage =
    "rans_decode: the stream is corrupt or does not hold n symbols";

inline void check_sign_block(const char* op, int64_t block) {
  TORCH_CHECK_VALUE(block >= 1, op, ": block must be at least 1 entry, got ", block);
}

inline void check_sign_encode(const at::Tensor& x, int64_t block) {
  check_floating("sign_encode", "x", x);
  check_sign_block("sign_encode", block);
}

inline void check_sign_residual(const at::Tensor& v, int64_t block) {
  TORCH_CHECK_TYPE(v.scalar_type() == at::kFloat && v.is_contiguous(),
                   "sign_residual: v must be a contiguous float32 tensor (overwritten with v - C(v)), got ",
                   py_dtype(v.scalar_type()), v.is_contiguous() ? "" : ", non-contiguous",
                   "; pass v.float().contiguous()");
  check_sign_block("sign_residual", block);
}

inline void check_sign_decode(const at::Tensor& signs, const at::Tensor& scales, int64_t numel, int64_t block) {
  check_sign_block("sign_decode", block);
  TORCH_CHECK_VALUE(numel >= 0, "sign_decode: numel must be >= 0, got ", numel);
  TORCH_CHECK_TYPE(signs.scalar_type() == at::kByte && scales.scalar_type() == at::kBFloat16,
                   "sign_decode: signs must be uint8 and scales bfloat16, got ", py_dtype(signs.scalar_type()), " and ",
                   py_dtype(scales.scalar_type()));
  const int64_t bytes = (numel + 7) / 8, blocks = numel > 0 ? (numel + block - 1) / block : 1;
  TORCH_CHECK_VALUE(signs.numel() == bytes && scales.numel() == blocks, "sign_decode: ", numel,
                    " entries in blocks of ", block, " need ", bytes, " sign bytes and ", blocks, " scales, got ",
                    signs.numel(), " and ", scales.numel(), "; pass the payload's numel and the compressor's block");
  TORCH_CHECK_VALUE(signs.device() == scales.device(), "sign_decode: signs are on ", signs.device(), " but scales on ",
                    scales.device(), "; move them to one device");
}

inline void check_sign_accumulate(const at::Tensor& out, at::TensorList signs, at::TensorList scales, int64_t block) {
  TORCH_CHECK_TYPE(out.scalar_type() == at::kFloat && out.is_contiguous(),
                   "sign_accumulate: out must be a contiguous float32 tensor, got ", py_dtype(out.scalar_type()),
                   out.is_contiguous() ? "" : ", non-contiguous");
  TORCH_CHECK_VALUE(signs.size() == scales.size(), "sign_accumulate: ", signs.size(), " sign tensors but ",
                    scales.size(), " scale tensors; pass one of each per payload");
  for (size_t r = 0; r < signs.size(); ++r) {
    check_sign_decode(signs[r], scales[r], out.numel(), block);
    TORCH_CHECK_VALUE(signs[r].device() == out.device(), "sign_accumulate: out is on ", out.device(),
                      " but a payload on ", signs[r].device(), "; move them to one device");
    check_apart("sign_accumulate", "out", out, "signs", signs[r]);
    check_apart("sign_accumulate", "out", out, "scales", scales[r]);
  }
}

using NamedTensors = std::initializer_list<std::pair<const char*, const at::Tensor*>>;

// A per-entry state of grad: contiguous fp32 of grad's size (its device: checked by the caller).
inline void check_states(const char* op, const at::Tensor& grad, NamedTensors states) {
  check_floating(op, "grad", grad);
  for (const auto& [name, t] : states) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == grad.numel(), op, ": ",
                     name, " must be a contiguous float32 tensor of grad's ", grad.numel(), " elements, got ",
                     py_dtype(t->scalar_type()), " of ", t->numel(), t->is_contiguous() ? "" : ", non-contiguous");
  }
}

// adam_normalize's inputs (adam_momentum's: op, and its u among `states`): grad floating, the
// states (m, v[, u]) contiguous fp32 of grad's size, c1 and c2 of 1 or grad's size, one device.
inline void check_adam_inputs(const char* op, const at::Tensor& grad, NamedTensors states, const at::Tensor& c1,
                              const at::Tensor& c2, double beta1, double beta2, double eps, double share) {
  check_states(op, grad, states);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"c1", &c1}, {"c2", &c2}}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat && t->is_contiguous() &&
                         (t->numel() == 1 || t->numel() == grad.numel()),
                     op, ": ", name, " must be a contiguous float32 tensor of 1 or ", grad.numel(),
                     " elements, got ", py_dtype(t->scalar_type()), " of ", t->numel(),
                     t->is_contiguous() ? "" : ", non-contiguous");
  }
  bool one_device = c1.device() == grad.device() && c2.device() == grad.device();
  std::string where;
  for (const auto& [name, t] : states) {
    one_device &= t->device() == grad.device();
    where += std::string(", ") + name + " on " + t->device().str();
  }
  TORCH_CHECK_VALUE(one_device, op, ": grad, its states, c1 and c2 must be on one device, got grad on ",
                    grad.device(), ", c1 on ", c1.device(), ", c2 on ", c2.device(), where);
  TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps >= 0 && share > 0 && share <= 1,
                    op, " needs 0 <= beta1, beta2 < 1, eps >= 0 and 0 < share <= 1, got beta1=", beta1,
                    ", beta2=", beta2, ", eps=", eps, ", share=", share);
}

// The outputs of adam_normalize.out, adam_momentum.out and momentum_compensate: contiguous fp32 of
// grad's size on its device, overlapping neither each other nor an input (the old states stay the
// rollback; a kernel reads an input entry after writing an output one).
inline void check_new_outputs(const char* op, const at::Tensor& grad, NamedTensors inputs, NamedTensors outputs) {
  for (const auto& [name, t] : outputs) {
    TORCH_CHECK_VALUE(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == grad.numel() &&
                          t->device() == grad.device(),
                      op, ": ", name, " must be a contiguous float32 tensor of ", grad.numel(),
                      " elements on ", grad.device(), ", got ", py_dtype(t->scalar_type()), " of ", t->numel(), " on ",
                      t->device(), t->is_contiguous() ? "" : ", non-contiguous");
  }
  if (grad.numel() == 0) return;
  auto overlaps = [](const at::Tensor& a, const at::Tensor& b) {
    return at::get_overlap_status(a, b) != at::MemOverlapStatus::No;  // TooHard counts as overlapping
  };
  bool overlap = false;
  for (auto o = outputs.begin(); o != outputs.end(); ++o) {
    for (auto p = o + 1; p != outputs.end(); ++p) overlap |= overlaps(*o->second, *p->second);
    overlap |= overlaps(*o->second, grad);
    for (const auto& named : inputs) overlap |= overlaps(*o->second, *named.second);
  }
  TORCH_CHECK_VALUE(!overlap, op, ": the outputs must be new buffers that overlap neither each other nor grad "
                              "or a state (the states stay the rollback)");
}

// Float64 sums in a fixed order (squared_distances, abs_moments): entry i of a block adds into lane
// i mod kSumLanes; blocks of kSumBlock entries are summed on their own, then added in order
// (reference.py has the spec).
inline constexpr int kSumLanes = 32;
inline constexpr int64_t kSumBlock = int64_t(1) << 16;

inline void check_squared_distances(const at::Tensor& x, at::TensorList others) {
  check_floating("squared_distances", "x", x);
  for (size_t i = 0; i < others.size(); ++i) {
    const std::string name = "others[" + std::to_string(i) + "]";
    check_floating("squared_distances", name.c_str(), others[i]);
    TORCH_CHECK_VALUE(others[i].numel() == x.numel(), "squared_distances: x has ", x.numel(), " elements but ", name,
                      " has ", others[i].numel());
    TORCH_CHECK_VALUE(others[i].device() == x.device(), "squared_distances: x is on ", x.device(), " but ", name,
                      " on ", others[i].device(), "; move them to one device");
  }
}

inline void check_abs_moments(const at::Tensor& x) { check_floating("abs_moments", "x", x); }

// momentum_compensate's arguments: u and e states of grad on its device, 0 <= beta < 1, a finite
// gain >= 0, a finite carry >= 0, and new outputs u_new and v.
inline void check_momentum_compensate(const at::Tensor& grad, const at::Tensor& u, const at::Tensor& e, double beta,
                                      double gain, double carry, const at::Tensor& u_new, const at::Tensor& v) {
  check_states("momentum_compensate", grad, {{"u", &u}, {"e", &e}});
  TORCH_CHECK_VALUE(u.device() == grad.device() && e.device() == grad.device(),
                    "momentum_compensate: grad, u and e must be on one device, got grad on ", grad.device(),
                    ", u on ", u.device(), ", e on ", e.device());
  TORCH_CHECK_VALUE(beta >= 0 && beta < 1 && std::isfinite(gain) && gain >= 0 && std::isfinite(carry) && carry >= 0,
                    "momentum_compensate needs 0 <= beta < 1, a finite gain >= 0 and a finite carry >= 0, got beta=",
                    beta, ", gain=", gain, ", carry=", carry);
  check_new_outputs("momentum_compensate", grad, {{"u", &u}, {"e", &e}}, {{"u_new", &u_new}, {"v", &v}});
}

inline int64_t packed_blocks(int64_t numel, int64_t block) { return (numel + block - 1) / block; }

// A float format whose largest value, (2 - 2^-m) 2^(2^e - 1 - bias), is a finite fp32.
inline void check_packed_format(const char* op, int64_t exponent, int64_t mantissa, int64_t bias) {
  check_format(exponent, mantissa, bias, 1.0);
  TORCH_CHECK_VALUE((int64_t{1} << exponent) - 1 - bias < 128, op, ": the float format [1, ", exponent, ", ", mantissa,
                    "] with bias ", bias, " has a largest value beyond fp32's; use a larger bias");
}

inline void check_packed_block(const char* op, int64_t block) {
  TORCH_CHECK_VALUE(block >= 1 && block <= 255, op, ": block must lie in [1, 255] entries (a block's count and an "
                    "offset in it are bytes), got ", block);
}

// Reads the indices back (a device synchronisation on CUDA): they must be topk_abs's.
inline void check_packed_encode(const at::Tensor& values, const at::Tensor& indices, int64_t numel, int64_t block,
                                int64_t exponent, int64_t mantissa, int64_t bias) {
  check_floating("packed_encode", "values", values);
  check_packed_block("packed_encode", block);
  check_packed_format("packed_encode", exponent, mantissa, bias);
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
                   "packed_encode: indices must be int64 or int32, got ", py_dtype(indices.scalar_type()));
  TORCH_CHECK_VALUE(values.numel() == indices.numel() && values.device() == indices.device(), "packed_encode: values (",
                    values.numel(), " on ", values.device(), ") and indices (", indices.numel(), " on ",
                    indices.device(), ") must have one size and one device");
  TORCH_CHECK_VALUE(numel >= 0, "packed_encode: numel must be >= 0, got ", numel);
  if (indices.numel() == 0) return;
  const at::Tensor i = indices.reshape(-1);
  const bool ascending = i.numel() < 2 || !at::le(i.slice(0, 1), i.slice(0, 0, -1)).any().item<bool>();
  TORCH_CHECK_INDEX(i[0].item<int64_t>() >= 0 && i[-1].item<int64_t>() < numel && ascending,
                    "packed_encode: indices must ascend strictly within [0, ", numel,
                    ") (topk_abs's order); pass the support Top-K selected");
}

// Reads the counts and offsets back (a device synchronisation on CUDA): every entry must land inside out.
// A payload's counts sum to its number of codes, and each offset lies in its block: below `block`,
// below `last` in the last block (whose entries come last). On the CPU one pass of plain loops (the
// decode of n payloads ran about 4 tensor ops each here); on a GPU as tensor ops.
inline bool packed_payload_inside(const at::Tensor& counts, const at::Tensor& offsets, int64_t codes, int64_t block,
                                  int64_t last) {
  if (counts.is_cpu()) {
    const at::Tensor n = counts.contiguous(), o = offsets.contiguous();
    const uint8_t *count = n.const_data_ptr<uint8_t>(), *offset = o.const_data_ptr<uint8_t>();
    int64_t total = 0;
    for (int64_t b = 0; b < n.numel(); ++b) total += count[b];
    if (total != codes || codes == 0) return total == codes;
    const int64_t body = total - count[n.numel() - 1];  // the entries before the last block's
    uint8_t high = 0, tail = 0;
    for (int64_t j = 0; j < body; ++j) high = std::max(high, offset[j]);
    for (int64_t j = body; j < total; ++j) tail = std::max(tail, offset[j]);
    return high < block && (body == total || tail < last);
  }
  const int64_t total = counts.numel() ? counts.sum(at::kLong).item<int64_t>() : 0;
  if (total != codes || codes == 0) return total == codes;
  const at::Tensor flat = offsets.reshape(-1);
  const int64_t tail = counts.reshape(-1)[-1].item<int64_t>();
  return !at::ge(flat, block).any().item<bool>() &&
         (tail == 0 || !at::ge(flat.slice(0, flat.numel() - tail), last).any().item<bool>());
}

inline void check_packed_accumulate(const at::Tensor& out, at::TensorList codes, at::TensorList scales,
                                    at::TensorList counts, at::TensorList offsets, int64_t block, int64_t exponent,
                                    int64_t mantissa, int64_t bias) {
  TORCH_CHECK_TYPE(out.scalar_type() == at::kFloat && out.is_contiguous(),
                   "packed_accumulate: out must be a contiguous float32 tensor, got ", py_dtype(out.scalar_type()),
                   out.is_contiguous() ? "" : ", non-contiguous");
  check_packed_block("packed_accumulate", block);
  check_packed_format("packed_accumulate", exponent, mantissa, bias);
  TORCH_CHECK_VALUE(codes.size() == scales.size() && codes.size() == counts.size() && codes.size() == offsets.size(),
                    "packed_accumulate: ", codes.size(), " codes, ", scales.size(), " scales, ", counts.size(),
                    " counts and ", offsets.size(), " offsets tensors; pass one of each per payload");
  const int64_t blocks = packed_blocks(out.numel(), block), last = out.numel() - (blocks - 1) * block;
  for (size_t r = 0; r < codes.size(); ++r) {
    const at::Tensor &c = codes[r], &s = scales[r], &n = counts[r], &o = offsets[r];
    TORCH_CHECK_TYPE(c.scalar_type() == at::kByte && n.scalar_type() == at::kByte && o.scalar_type() == at::kByte &&
                         s.scalar_type() == at::kFloat,
                     "packed_accumulate: a payload is codes, counts, offsets uint8 and scale float32, got ",
                     py_dtype(c.scalar_type()), ", ", py_dtype(n.scalar_type()), ", ", py_dtype(o.scalar_type()),
                     " and ", py_dtype(s.scalar_type()));
    TORCH_CHECK_VALUE(c.device() == out.device() && s.device() == out.device() && n.device() == out.device() &&
                          o.device() == out.device(),
                      "packed_accumulate: out is on ", out.device(), " but a payload is not; move them to one device");
    for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"codes", &c}, {"scales", &s},
                                  {"counts", &n}, {"offsets", &o}}) {
      check_apart("packed_accumulate", "out", out, name, *t);
    }
    TORCH_CHECK_VALUE(s.numel() == 1 && n.numel() == blocks && o.numel() == c.numel(), "packed_accumulate: a payload of ",
                      out.numel(), " entries in blocks of ", block, " has 1 scale, ", blocks,
                      " counts and as many offsets as codes, got ", s.numel(), ", ", n.numel(), ", ", o.numel(),
                      " and ", c.numel(), "; pass the payload's numel and the compressor's block");
    TORCH_CHECK_INDEX(packed_payload_inside(n, o, c.numel(), block, last), "packed_accumulate: a payload's counts sum to ",
                      n.sum(at::kLong).item<int64_t>(), " for ", c.numel(), " codes, or an offset points past its "
                      "block; the payload is corrupt or not of ", out.numel(), " entries");  // the sum: on failure only
  }
}

}  // namespace threepc
