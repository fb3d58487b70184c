// Torch bindings of the CPU kernels: the operator schemas of the `diffsmooth_fast` library and their CPU
// implementations. CUDA implementations of the same schemas live in bindings_cuda.cpp, built only when
// torch has CUDA.
#include <torch/extension.h>
#include <torch/library.h>

#include "bindings_args.h"
#include "core/noise.h"

namespace {

// Schemas carry 64-bit seeds and stream ids as torch `int` (int64); Python passes their two's-complement
// reinterpretation, and the kernels take the bits back as uint64.
void gaussian_noise_cpu(at::Tensor& out, int64_t seed, int64_t offset, int64_t stream) {
  TORCH_CHECK(out.device().is_cpu(), "gaussian_noise_: out must be a CPU tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat, "gaussian_noise_: out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "gaussian_noise_: out must be contiguous");
  TORCH_CHECK(offset >= 0, "gaussian_noise_: offset must be >= 0, got ", offset);
  diffsmooth::core::gaussian_noise_f32(out.data_ptr<float>(), out.numel(), static_cast<uint64_t>(seed),
                                       static_cast<uint64_t>(offset), static_cast<uint64_t>(stream));
}

void noisy_input_cpu(at::Tensor& out, const at::Tensor& x, const c10::optional<at::Tensor>& noise, double sigma,
                     double sqrt_abar, bool affine, int64_t seed, int64_t offset, int64_t stream) {
  TORCH_CHECK(out.device().is_cpu(), "noisy_input_: out must be a CPU tensor");
  const auto args =
      diffsmooth::bindings::noisy_input_args(out, x, noise, sigma, sqrt_abar, affine, seed, offset, stream);
  TORCH_CHECK(diffsmooth::core::noisy_input(args), "noisy_input_: unsupported dtype");
}

void denoise_replicate_cpu(at::Tensor& out, const at::Tensor& x_t, const at::Tensor& eps,
                           const c10::optional<at::Tensor>& local_noise, const c10::optional<at::Tensor>& mean,
                           const c10::optional<at::Tensor>& std, int64_t m, double sqrt_recip_abar,
                           double sqrt_recipm1_abar, double local_sigma, int64_t seed, int64_t offset,
                           int64_t stream) {
  TORCH_CHECK(out.device().is_cpu(), "denoise_replicate_: out must be a CPU tensor");
  const auto args = diffsmooth::bindings::denoise_args(out, x_t, eps, local_noise, mean, std, m, sqrt_recip_abar,
                                                       sqrt_recipm1_abar, local_sigma, seed, offset, stream);
  TORCH_CHECK(diffsmooth::core::denoise_replicate(args), "denoise_replicate_: unsupported dtype");
}

void vote_cpu(at::Tensor& counts, const at::Tensor& logits, int64_t m) {
  TORCH_CHECK(counts.device().is_cpu(), "vote_: counts must be a CPU tensor");
  TORCH_CHECK(diffsmooth::core::vote(diffsmooth::bindings::vote_args(counts, logits, m)), "vote_: unsupported dtype");
}

}  // namespace

TORCH_LIBRARY(diffsmooth_fast, m) {
  m.def("gaussian_noise_(Tensor(a!) out, int seed, int offset, int stream) -> ()");
  // The fused ops write into an `out` the caller allocated, so the caller picks dtype and memory format and
  // CUDA graphs can reuse the buffer; see ops/reference.py for what each computes.
  m.def(
      "noisy_input_(Tensor(a!) out, Tensor x, Tensor? noise, float sigma, float sqrt_abar, bool affine, int seed, "
      "int offset, int stream) -> ()");
  m.def(
      "denoise_replicate_(Tensor(a!) out, Tensor x_t, Tensor eps, Tensor? local_noise, Tensor? mean, Tensor? std, "
      "int m, float sqrt_recip_abar, float sqrt_recipm1_abar, float local_sigma, int seed, int offset, int stream) "
      "-> ()");
  m.def("vote_(Tensor(a!) counts, Tensor logits, int m) -> ()");
}

TORCH_LIBRARY_IMPL(diffsmooth_fast, CPU, m) {
  m.impl("gaussian_noise_", &gaussian_noise_cpu);
  m.impl("noisy_input_", &noisy_input_cpu);
  m.impl("denoise_replicate_", &denoise_replicate_cpu);
  m.impl("vote_", &vote_cpu);
}

// The module exists so that `import diffsmooth_fast._C` loads the library and registers the ops above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "diffsmooth_fast CPU kernels (registered as torch.ops.diffsmooth_fast.*)";
}
