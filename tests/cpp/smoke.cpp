// ctest smoke test: load the op library built by CMake, run unimri::unified_focal_loss_cpu
// on a small tensor and check it against facts that hold for any correct kernel.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cmath>
#include <iostream>
#include <tuple>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: unimri_smoke /path/to/libunimri_ops.so\n";
    return 2;
  }
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::cerr << "cannot load " << argv[1] << ": " << dlerror() << "\n";
    return 1;
  }
  using Sig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                                 double, double, int64_t, bool, bool);
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("unimri::unified_focal_loss_cpu", "").typed<Sig>();
  at::manual_seed(0);
  const int64_t B = 2, C = 3, N = 37;
  at::Tensor logits = at::randn({B, C, N}, at::kDouble);
  at::Tensor target = at::randint(0, C, {B, N}, at::kLong);
  // Cross-entropy parametrisation: focal weight 1, γ = 0, no Tversky part.
  at::Tensor params = at::zeros({4, C}, at::kDouble);
  params[0].fill_(1.0);
  params[3].fill_(1.0);
  auto [loss, grad] = op.call(logits, target, params, 0.5, 0.5, 1e-6, -100, false, true);
  at::Tensor logp = at::log_softmax(logits, 1);
  at::Tensor ce = -logp.gather(1, target.unsqueeze(1)).squeeze(1).mean(1);
  const double loss_err = (loss - ce).abs().max().item<double>();
  // Softmax losses are invariant to a shift of all logits: the gradient sums to 0 per pixel.
  const double shift_err = grad.sum(1).abs().max().item<double>();
  at::Tensor expected_grad = (logp.exp() - at::one_hot(target, C).permute({0, 2, 1}).to(at::kDouble)) / N;
  const double grad_err = (grad - expected_grad).abs().max().item<double>();
  std::cout << "loss_err=" << loss_err << " grad_err=" << grad_err << " shift_err=" << shift_err << "\n";
  if (!(loss_err < 1e-12 && grad_err < 1e-12 && shift_err < 1e-12)) {
    std::cerr << "unimri_smoke: FAILED\n";
    return 1;
  }
  std::cout << "unimri_smoke: OK\n";
  return 0;
}
