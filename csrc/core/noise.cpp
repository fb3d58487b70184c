#include "noise.h"

#include <cmath>

#include "philox.h"

namespace diffsmooth {
namespace core {

void gaussian_noise_run(float* out, int64_t n, uint64_t seed, uint64_t offset, uint64_t stream) {
  for (int64_t i = 0; i < n; ++i) out[i] = philox_normal(seed, offset + static_cast<uint64_t>(i), stream);
}

void gaussian_noise_f32(float* out, int64_t numel, uint64_t seed, uint64_t offset, uint64_t stream) {
  // Runs of kRun elements: each is a pure function of its positions, so the split does not change values.
  constexpr int64_t kRun = 1024;
  const int64_t runs = (numel + kRun - 1) / kRun;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t start = r * kRun, n = numel - start < kRun ? numel - start : kRun;
    gaussian_noise_run(out + start, n, seed, offset + static_cast<uint64_t>(start), stream);
  }
}

void philox_words(uint32_t* out, int64_t numel, uint64_t seed, uint64_t offset, uint64_t stream) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < numel; ++i) {
    const uint64_t c = offset + static_cast<uint64_t>(i);
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32),
                                    static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                                    static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    for (int w = 0; w < 4; ++w) out[4 * i + w] = r.v[w];
  }
}

}  // namespace core
}  // namespace diffsmooth
