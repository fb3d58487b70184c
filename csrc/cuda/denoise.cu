// Fused one-shot denoise and local-noise replication on CUDA: one thread per input element (in the output's
// memory order, so the m stores of a warp are coalesced); x_hat is computed once and written m times.
#include <cuda_runtime.h>

#include "../core/philox.h"
#include "denoise.h"
#include "dtype_cuda.cuh"

namespace diffsmooth {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename TIn, typename TOut>
__global__ void denoise_kernel(core::DenoiseArgs a) {
  const int64_t C = a.channels, W = a.width, HW = a.height * W, numel = C * HW, total = a.batch * numel;
  const TIn* x_t = static_cast<const TIn*>(a.x_t);
  const TIn* eps = static_cast<const TIn*>(a.eps);
  TOut* out = static_cast<TOut*>(a.out);
  const bool noisy = a.local_sigma != 0.0f;  // DDS (sigma' = 0) draws nothing
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t b = i / numel, p = i - b * numel;
    const int64_t c = a.channels_last ? p % C : p / HW;
    const int64_t hw = a.channels_last ? p / C : p - c * HW;
    const int64_t h = hw / W, w = hw - h * W, e = c * HW + hw;
    const float xv = dload(x_t + b * a.x_t_strides[0] + c * a.x_t_strides[1] + h * a.x_t_strides[2] +
                           w * a.x_t_strides[3]);
    const float ev = dload(eps + b * a.eps_strides[0] + c * a.eps_strides[1] + h * a.eps_strides[2] +
                           w * a.eps_strides[3]);
    const float x0 = a.sqrt_recip_abar * xv - a.sqrt_recipm1_abar * ev;
    // Ternaries, not fminf/fmaxf (which drop NaN): a NaN must reach the caller's finiteness check.
    const float x_hat = ((x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0)) + 1.0f) * 0.5f;
    for (int64_t j = 0; j < a.m; ++j) {
      const int64_t r = b * a.m + j;  // output row
      float v = x_hat;
      if (noisy) {
        const float z = a.local_noise != nullptr
                            ? a.local_noise[(a.noise_per_copy ? r : j) * numel + e]
                            : core::philox_normal(a.seed, a.offset + static_cast<uint64_t>(r * numel + e), a.stream);
        v += a.local_sigma * z;
      }
      if (a.mean != nullptr) v -= a.mean[c];
      if (a.std != nullptr) v /= a.std[c];
      dstore(out + r * numel + p, v);
    }
  }
}

}  // namespace

int launch_denoise_replicate(const core::DenoiseArgs& a, void* cuda_stream) {
  const int64_t total = a.batch * a.channels * a.height * a.width;
  if (total <= 0 || a.m <= 0) return 0;
  const cudaStream_t s = static_cast<cudaStream_t>(cuda_stream);
  const int blocks = grid_blocks(total, kThreads);
  bool known = false;
  core::dispatch_dtype(a.in_dtype, [&](auto in_tag) {
    known = core::dispatch_dtype(a.out_dtype, [&](auto out_tag) {
      denoise_kernel<decltype(in_tag), decltype(out_tag)><<<blocks, kThreads, 0, s>>>(a);
    });
  });
  return known ? static_cast<int>(cudaGetLastError()) : static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace diffsmooth
