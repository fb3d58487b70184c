// CPU kernels of the project's counter-based Gaussian noise (torch-free; see philox.h).
#pragma once

#include <cstdint>

namespace diffsmooth {
namespace core {

// out[i] = philox_normal(seed, offset + i, stream) for i in [0, numel). OpenMP-parallel; the values do not
// depend on the number of threads because each element is a pure function of its position.
void gaussian_noise_f32(float* out, int64_t numel, uint64_t seed, uint64_t offset, uint64_t stream);

// The same values, on the calling thread only: the building block of the fused kernels, which draw one
// image row at a time inside their own parallel loops.
void gaussian_noise_run(float* out, int64_t n, uint64_t seed, uint64_t offset, uint64_t stream);

// out[i] = the four raw Philox words of counter (offset + i, stream) for i in [0, numel), as out[4*i + w].
// Exposed so tests can compare the integer stream bit for bit with other implementations.
void philox_words(uint32_t* out, int64_t numel, uint64_t seed, uint64_t offset, uint64_t stream);

}  // namespace core
}  // namespace diffsmooth
