// Operator schemas of the threepc library, declared once for every backend.
//
// Each device registers its kernels with TORCH_LIBRARY_IMPL(threepc, <Key>, m)
// in its own translation unit (csrc/topk.cpp and csrc/codecs.cpp for CPU). Fake (meta) kernels for
// torch.compile live in compressors/ops.py.
#include <Python.h>
#include <torch/library.h>

// `import compressors._C` loads this shared object, which runs the static
// registrations below; the module itself has no Python attributes.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(threepc, m) {
  // k largest |x| (ties: lowest index); indices ascending, values signed.
  m.def("topk_abs(Tensor x, int k) -> (Tensor values, Tensor indices)");
  // d = grad - h; (values, indices) = topk_abs(d, k); h[indices] += values.
  m.def("ef21_topk_step(Tensor grad, Tensor(a!) h, int k) -> (Tensor values, Tensor indices)");
  // out[indices[j]] += alpha * values[j] for j in order (row-major = rank order).
  m.def("sparse_accumulate(Tensor(a!) out, Tensor values, Tensor indices, float alpha=1.0) -> ()");
  // uint8 code of v / scale in the float format [1, exponent, mantissa] with bias; seed < 0:
  // round to nearest (ties to even), else stochastic rounding seeded per element.
  m.def("float_encode(Tensor v, int exponent, int mantissa, int bias, float scale, int seed) -> Tensor");
  m.def("float_encode.out(Tensor v, int exponent, int mantissa, int bias, float scale, int seed, *, Tensor(a!) out) -> ()");
  // fp32 value of each code, times scale.
  m.def("float_decode(Tensor codes, int exponent, int mantissa, int bias, float scale) -> Tensor");
  m.def("float_decode.out(Tensor codes, int exponent, int mantissa, int bias, float scale, *, Tensor(a!) out) -> ()");
  // Prefix-code the uint8 symbols MSB-first with (codes int32[A], lengths uint8[A]).
  m.def("huffman_encode(Tensor symbols, Tensor codes, Tensor lengths) -> Tensor");
  // The first n symbols of a stream coded with that table.
  m.def("huffman_decode(Tensor stream, int n, Tensor codes, Tensor lengths) -> Tensor");
}
