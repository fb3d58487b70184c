// CUDA implementations of the schemas defined in bindings.cpp; built into diffsmooth_fast._C_cuda only when
// the installed torch has CUDA. Kernels are in cuda/*.cu, which include no torch headers.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "cuda/noise.h"

namespace {

void gaussian_noise_cuda(at::Tensor& out, int64_t seed, int64_t offset, int64_t stream) {
  TORCH_CHECK(out.is_cuda(), "gaussian_noise_: out must be a CUDA tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat, "gaussian_noise_: out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "gaussian_noise_: out must be contiguous");
  TORCH_CHECK(offset >= 0, "gaussian_noise_: offset must be >= 0, got ", offset);
  const c10::cuda::CUDAGuard guard(out.device());
  const int err = diffsmooth::cuda::launch_gaussian_noise_f32(
      out.data_ptr<float>(), out.numel(), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
      static_cast<uint64_t>(stream), at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "gaussian_noise_: CUDA launch failed with error ", err);
}

}  // namespace

TORCH_LIBRARY_IMPL(diffsmooth_fast, CUDA, m) { m.impl("gaussian_noise_", &gaussian_noise_cuda); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "diffsmooth_fast CUDA kernels (registered as torch.ops.diffsmooth_fast.*)";
}
