// Makes unimri_kernels._C importable from Python; the ops register themselves through
// the static initialisers of TORCH_LIBRARY / TORCH_LIBRARY_IMPL when the library loads.
#ifdef UNIMRI_PYTHON_MODULE
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "unimri C++ CPU kernels (ops under torch.ops.unimri)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif
