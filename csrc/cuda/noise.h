// Launchers of the CUDA kernels. Plain types only: this header is included by bindings_cuda.cpp (which
// has torch) and by noise.cu (which must not), so it carries no CUDA or torch types either.
#pragma once

#include <cstdint>

namespace diffsmooth {
namespace cuda {

// Fill out[0 .. numel) (device memory) with philox_normal(seed, offset + i, stream), on the CUDA stream
// `cuda_stream` (a cudaStream_t passed as void*). Returns 0 or a cudaError_t code.
int launch_gaussian_noise_f32(float* out, int64_t numel, uint64_t seed, uint64_t offset, uint64_t stream,
                              void* cuda_stream);

}  // namespace cuda
}  // namespace diffsmooth
