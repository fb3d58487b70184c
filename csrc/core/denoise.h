// CPU kernel of the fused one-shot denoise and local-noise replication (Algorithms 2 and 3).
// The argument struct holds plain types only; the CUDA launcher (cuda/denoise.h) takes the same one.
#pragma once

#include <cstdint>

namespace diffsmooth {
namespace core {

struct DenoiseArgs {
  void* out;           // [batch*m, C, H, W] of out_dtype, NCHW-contiguous or channels_last; row b*m + j
  int out_dtype;       // DType code (dtype.h)
  bool channels_last;  // memory format of out; noise positions are logical NCHW indices either way
  // x_t and eps: logical [batch, C, H, W] of in_dtype with arbitrary element strides (n, c, h, w), so a
  // channels_last tensor or the eps channels of the UNet's 6-channel output are read in place.
  const void* x_t;
  const void* eps;
  int in_dtype;
  int64_t x_t_strides[4];
  int64_t eps_strides[4];
  // Local noise: contiguous float32 [m, C, H, W] added to every sample (fixed mode) when !noise_per_copy,
  // [batch*m, C, H, W] (one per output row) when noise_per_copy; nullptr draws it (fresh mode: copy j of
  // sample b, element e uses position offset + (b*m + j)*numel + e), unless local_sigma == 0 (no noise).
  const float* local_noise;
  bool noise_per_copy;
  const float* mean;  // [C] float32 subtracted after the noise, or nullptr for 0
  const float* std;   // [C] float32 divided by after that, or nullptr for 1
  int64_t batch, m, channels, height, width;
  float sqrt_recip_abar;    // sqrt(1/abar), rounded from float64 by the caller
  float sqrt_recipm1_abar;  // sqrt(1/abar - 1)
  float local_sigma;        // sigma'
  uint64_t seed, offset, stream;
};

// Fills a.out: x0 = clamp(sqrt_recip_abar*x_t - sqrt_recipm1_abar*eps, -1, 1), x_hat = (x0 + 1)/2,
// out[b*m + j] = (x_hat + local_sigma*noise_j - mean)/std. OpenMP-parallel over (sample, row). Returns false
// (and writes nothing) for an unknown dtype code.
bool denoise_replicate(const DenoiseArgs& a);

}  // namespace core
}  // namespace diffsmooth
