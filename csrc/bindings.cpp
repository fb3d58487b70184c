// Torch bindings of the CPU kernels: the operator schemas of the `diffsmooth_fast` library and their CPU
// implementations. CUDA implementations of the same schemas live in bindings_cuda.cpp, built only when
// torch has CUDA.
#include <torch/extension.h>
#include <torch/library.h>

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

}  // namespace

TORCH_LIBRARY(diffsmooth_fast, m) {
  m.def("gaussian_noise_(Tensor(a!) out, int seed, int offset, int stream) -> ()");
}

TORCH_LIBRARY_IMPL(diffsmooth_fast, CPU, m) { m.impl("gaussian_noise_", &gaussian_noise_cpu); }

// The module exists so that `import diffsmooth_fast._C` loads the library and registers the ops above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "diffsmooth_fast CPU kernels (registered as torch.ops.diffsmooth_fast.*)";
}
