// Makes unimri_kernels._C importable from Python; the ops register themselves through
// the static initialisers of TORCH_LIBRARY / TORCH_LIBRARY_IMPL when the library loads.
#ifdef UNIMRI_PYTHON_MODULE
#include <Python.h>
#include <torch/version.h>

#define UNIMRI_STR2(x) #x
#define UNIMRI_STR(x) UNIMRI_STR2(x)

extern "C" {
// Read from the file's bytes by unimri_kernels.dispatch before loading it, so that a build
// against another torch is reported (and skipped) instead of failing on undefined symbols.
__attribute__((used, visibility("default"))) const char unimri_built_against_torch[] =
    "unimri-built-against-torch=" UNIMRI_STR(TORCH_VERSION_MAJOR) "." UNIMRI_STR(TORCH_VERSION_MINOR) "." UNIMRI_STR(
        TORCH_VERSION_PATCH) ";";

PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "unimri C++ CPU kernels (ops under torch.ops.unimri)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif
