// CUDA implementations of the schemas defined in bindings.cpp; built into diffsmooth_fast._C_cuda only when
// the installed torch has CUDA. Kernels are in cuda/*.cu, which include no torch headers.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "bindings_args.h"
#include "cuda/denoise.h"
#include "cuda/noise.h"
#include "cuda/noisy_input.h"
#include "cuda/vote.h"

namespace {

void gaussian_noise_cuda(at::Tensor& out, int64_t seed, int64_t offset, int64_t stream) {
  TORCH_CHECK(out.is_cuda(), "gaussian_noise_: out must be a CUDA tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat, "gaussian_noise_: out must be float32, got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "gaussian_noise_: out must be contiguous");
  TORCH_CHECK(offset >= 0, "gaussian_noise_: offset must be >= 0, got ", offset);
  const c10::cuda::CUDAGuard guard(out.device());
  const int err = diffsmooth::cuda::launch_gaussian_noise_f32(
      out.data_ptr<float>(), out.numel(), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
      static_cast<uint64_t>(stream), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "gaussian_noise_: CUDA launch failed with error ", err);
}

void noisy_input_cuda(at::Tensor& out, const at::Tensor& x, const c10::optional<at::Tensor>& noise, double sigma,
                      double sqrt_abar, bool affine, int64_t seed, int64_t offset, int64_t stream) {
  TORCH_CHECK(out.is_cuda(), "noisy_input_: out must be a CUDA tensor");
  const auto args =
      diffsmooth::bindings::noisy_input_args(out, x, noise, sigma, sqrt_abar, affine, seed, offset, stream);
  const c10::cuda::CUDAGuard guard(out.device());
  const int err = diffsmooth::cuda::launch_noisy_input(args, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "noisy_input_: CUDA launch failed with error ", err);
}

void denoise_replicate_cuda(at::Tensor& out, const at::Tensor& x_t, const at::Tensor& eps,
                            const c10::optional<at::Tensor>& local_noise, const c10::optional<at::Tensor>& mean,
                            const c10::optional<at::Tensor>& std, int64_t m, double sqrt_recip_abar,
                            double sqrt_recipm1_abar, double local_sigma, int64_t seed, int64_t offset,
                            int64_t stream) {
  TORCH_CHECK(out.is_cuda(), "denoise_replicate_: out must be a CUDA tensor");
  const auto args = diffsmooth::bindings::denoise_args(out, x_t, eps, local_noise, mean, std, m, sqrt_recip_abar,
                                                       sqrt_recipm1_abar, local_sigma, seed, offset, stream);
  const c10::cuda::CUDAGuard guard(out.device());
  const int err = diffsmooth::cuda::launch_denoise_replicate(args, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "denoise_replicate_: CUDA launch failed with error ", err);
}

void vote_cuda(at::Tensor& counts, const at::Tensor& logits, int64_t m) {
  TORCH_CHECK(counts.is_cuda(), "vote_: counts must be a CUDA tensor");
  const auto args = diffsmooth::bindings::vote_args(counts, logits, m);
  TORCH_CHECK(args.classes <= diffsmooth::cuda::kVoteMaxClasses, "vote_: the CUDA kernel takes at most ",
              diffsmooth::cuda::kVoteMaxClasses, " classes, got ", args.classes, "; use the triton backend");
  const c10::cuda::CUDAGuard guard(counts.device());
  const int err = diffsmooth::cuda::launch_vote(args, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "vote_: CUDA launch failed with error ", err);
}

}  // namespace

TORCH_LIBRARY_IMPL(diffsmooth_fast, CUDA, m) {
  m.impl("gaussian_noise_", &gaussian_noise_cuda);
  m.impl("noisy_input_", &noisy_input_cuda);
  m.impl("denoise_replicate_", &denoise_replicate_cuda);
  m.impl("vote_", &vote_cuda);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "diffsmooth_fast CUDA kernels (registered as torch.ops.diffsmooth_fast.*)";
}
