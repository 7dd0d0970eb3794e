// The Python module compressors._C: loading it runs the kernels' static registrations.
//
// The operator schemas are defined once, in Python (compressors/kernels/ops.py, with
// torch.library); each device's kernels register for them with TORCH_LIBRARY_IMPL(threepc, <Key>, m):
// csrc/*.cpp for CPU, csrc/cuda/kernels.cu for CUDA. The dispatcher accepts
// kernels registered before their schema. compressors/kernels checks the torch version the library
// was built against (_C_build.json, written by setup.py) before loading it.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
