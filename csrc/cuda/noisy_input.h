// Launcher of the fused noisy-input CUDA kernel. Plain types only (see noise.h): the argument struct is the
// CPU kernel's, with device pointers.
#pragma once

#include "../core/noisy_input.h"

namespace diffsmooth {
namespace cuda {

// Fills a.out on the CUDA stream `cuda_stream` (a cudaStream_t as void*). Returns 0 or a cudaError_t code.
int launch_noisy_input(const core::NoisyInputArgs& a, void* cuda_stream);

}  // namespace cuda
}  // namespace diffsmooth
