// Fused noisy input on CUDA: one thread per output element, in the output's memory order (coalesced
// stores); the noise position is the element's logical NCHW index, so both formats draw the same noise.
#include <cuda_runtime.h>

#include "../core/philox.h"
#include "dtype_cuda.cuh"
#include "noisy_input.h"

namespace diffsmooth {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void noisy_input_kernel(core::NoisyInputArgs a) {
  const int64_t C = a.channels, HW = a.height * a.width, numel = C * HW, total = a.batch * numel;
  T* out = static_cast<T*>(a.out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t b = i / numel, p = i - b * numel;
    const int64_t c = a.channels_last ? p % C : p / HW;
    const int64_t hw = a.channels_last ? p / C : p - c * HW;
    const int64_t e = c * HW + hw;  // logical index within the image
    const float z = a.noise != nullptr ? a.noise[b * numel + e]
                                       : core::philox_normal(a.seed, a.offset + static_cast<uint64_t>(b * numel + e),
                                                             a.stream);
    float v = a.x[e] + a.sigma * z;
    if (a.affine) v = a.sqrt_abar * (2.0f * v - 1.0f);
    dstore(out + i, v);
  }
}

}  // namespace

int launch_noisy_input(const core::NoisyInputArgs& a, void* cuda_stream) {
  const int64_t total = a.batch * a.channels * a.height * a.width;
  if (total <= 0) return 0;
  const cudaStream_t s = static_cast<cudaStream_t>(cuda_stream);
  const int blocks = grid_blocks(total, kThreads);
  const bool known = core::dispatch_dtype(a.out_dtype, [&](auto tag) {
    noisy_input_kernel<decltype(tag)><<<blocks, kThreads, 0, s>>>(a);
  });
  return known ? static_cast<int>(cudaGetLastError()) : static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace diffsmooth
