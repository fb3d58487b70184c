// CUDA kernel of the project's counter-based Gaussian noise: the generator itself is core/philox.h,
// shared with the CPU kernel, so the two cannot drift apart.
#include <cuda_runtime.h>

#include "../core/philox.h"
#include "noise.h"

namespace diffsmooth {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void gaussian_noise_f32_kernel(float* __restrict__ out, int64_t numel, uint64_t seed,
                                          uint64_t offset, uint64_t stream) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
    out[i] = core::philox_normal(seed, offset + static_cast<uint64_t>(i), stream);
  }
}

}  // namespace

int launch_gaussian_noise_f32(float* out, int64_t numel, uint64_t seed, uint64_t offset, uint64_t stream,
                              void* cuda_stream) {
  if (numel <= 0) return 0;
  // Grid-stride loop: enough blocks to fill any current GPU several times over, capped so that huge
  // tensors do not overflow the grid dimension.
  const int64_t wanted = (numel + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < 65536 ? wanted : 65536);
  gaussian_noise_f32_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      out, numel, seed, offset, stream);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace diffsmooth
