// CPU kernel of the fused noisy input: B noisy copies of one image, scaled for the diffusion model.
// The argument struct holds plain types only; the CUDA launcher (cuda/noisy_input.h) takes the same one.
#pragma once

#include <cstdint>

namespace diffsmooth {
namespace core {

struct NoisyInputArgs {
  void* out;           // [batch, C, H, W] of out_dtype, NCHW-contiguous or channels_last (NHWC in memory)
  int out_dtype;       // DType code (dtype.h)
  bool channels_last;  // memory format of out; noise positions are logical NCHW indices either way
  const float* x;      // [C, H, W] contiguous float32: the clean image in [0, 1]
  const float* noise;  // [batch, C, H, W] contiguous float32 standard normals, or nullptr to draw them
  int64_t batch, channels, height, width;
  float sigma;      // smoothing noise std, pixel units
  float sqrt_abar;  // sqrt(alpha_bar_t*), used when affine
  bool affine;      // true: sqrt_abar * (2*(x + sigma*eps) - 1) (diffusion input); false: x + sigma*eps (Cohen)
  uint64_t seed;    // Philox key
  uint64_t offset;  // position of element 0 of copy 0; copy b, element e uses offset + b*numel + e
  uint64_t stream;  // Philox stream (counter words c2, c3)
};

// Fills a.out. OpenMP-parallel over (copy, row); values do not depend on the thread count. Returns false
// (and writes nothing) for an unknown out_dtype.
bool noisy_input(const NoisyInputArgs& a);

}  // namespace core
}  // namespace diffsmooth
