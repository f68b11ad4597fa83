// The Python module fastlv._C. Importing it runs the TORCH_LIBRARY_FRAGMENT(fastlv_C, ...) blocks of
// every kernel file linked into it; the ops are then reachable as torch.ops.fastlv_C.<name>.
#include <Python.h>

#ifndef FASTLV_CPU_CAPABILITY
#define FASTLV_CPU_CAPABILITY "default"
#endif

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastlv compiled kernels", -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef FASTLV_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(m, "cpu_capability", FASTLV_CPU_CAPABILITY);
  return m;
}
