// Operator schemas of the threepc library, declared once for every backend.
//
// Each device registers its kernels with TORCH_LIBRARY_IMPL(threepc, <Key>, m)
// in its own translation unit (csrc/topk.cpp for CPU). Fake (meta) kernels for
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
}
