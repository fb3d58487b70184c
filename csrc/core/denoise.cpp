#include "denoise.h"

#include <algorithm>
#include <vector>

#include "dtype.h"
#include "noise.h"
#include "rows.h"

namespace diffsmooth {
namespace core {
namespace {

// dst[w] = src[w * stride] as float; the unit-stride case (NCHW tensors, channel slices of them) vectorises.
template <typename T>
inline void gather_row(const T* src, int64_t stride, int64_t n, float* dst) {
  if (stride == 1) {
    for (int64_t w = 0; w < n; ++w) dst[w] = load(src + w);
  } else {
    for (int64_t w = 0; w < n; ++w) dst[w] = load(src + w * stride);
  }
}

template <typename TIn, typename TOut>
void denoise_impl(const DenoiseArgs& a) {
  const int64_t C = a.channels, H = a.height, W = a.width, HW = H * W, numel = C * HW, m = a.m;
  const TIn* x_t = static_cast<const TIn*>(a.x_t);
  const TIn* eps = static_cast<const TIn*>(a.eps);
  const int64_t sx[4] = {a.x_t_strides[0], a.x_t_strides[1], a.x_t_strides[2], a.x_t_strides[3]};
  const int64_t se[4] = {a.eps_strides[0], a.eps_strides[1], a.eps_strides[2], a.eps_strides[3]};
  TOut* out = static_cast<TOut*>(a.out);
  // Scalars in locals: read through `a`, the compiler would have to assume the stores below may alias them.
  const float c_x = a.sqrt_recip_abar, c_eps = a.sqrt_recipm1_abar, local_sigma = a.local_sigma;
  const bool noisy = local_sigma != 0.0f;  // DDS (sigma' = 0) draws nothing
  // Work item = one image row (all channels) of one sample: x_hat is computed once and replicated m times,
  // each copy with its own W-long runs of consecutive noise positions.
#pragma omp parallel
  {
    std::vector<float> x_hat(static_cast<size_t>(C * W)), eps_row(static_cast<size_t>(C * W)),
        row(static_cast<size_t>(C * W));
#pragma omp for schedule(static)
    for (int64_t item = 0; item < a.batch * H; ++item) {
      const int64_t b = item / H, h = item % H;
      // Gather the row of x_t and eps (any strides) into float buffers, then do the arithmetic in one
      // contiguous, branch-free loop that vectorises: clamping scalar values of random sign as they are loaded
      // costs a branch misprediction per element (measured: 2x slower).
      for (int64_t c = 0; c < C; ++c) {
        gather_row(x_t + b * sx[0] + c * sx[1] + h * sx[2], sx[3], W, x_hat.data() + c * W);
        gather_row(eps + b * se[0] + c * se[1] + h * se[2], se[3], W, eps_row.data() + c * W);
      }
      for (int64_t i = 0; i < C * W; ++i) {
        float v = c_x * x_hat[i] - c_eps * eps_row[i];
        // Two unconditional selects, not std::clamp/fmin: NaN must pass through (each comparison is false
        // for NaN) so the caller's finiteness check sees it. A nested ternary would evaluate its second
        // comparison only on one branch; under the default -ftrapping-math GCC then keeps the branches
        // (scalar code, a misprediction per element of random sign) instead of emitting maxps/minps.
        v = v < -1.0f ? -1.0f : v;
        v = v > 1.0f ? 1.0f : v;
        x_hat[i] = (v + 1.0f) * 0.5f;  // exactly (x0 + 1)/2
      }
      for (int64_t j = 0; j < m; ++j) {
        const int64_t r = b * m + j;  // output row
        for (int64_t c = 0; c < C; ++c) {
          const int64_t e0 = c * HW + h * W;
          const float* xh = x_hat.data() + c * W;
          float* z = row.data() + c * W;
          if (noisy) {
            const float* noise = z;
            if (a.local_noise != nullptr) {
              noise = a.local_noise + (a.noise_per_copy ? r : j) * numel + e0;
            } else {
              gaussian_noise_run(z, W, a.seed, a.offset + static_cast<uint64_t>(r * numel + e0), a.stream);
            }
            for (int64_t w = 0; w < W; ++w) z[w] = xh[w] + local_sigma * noise[w];
          } else {
            std::copy(xh, xh + W, z);
          }
          // Skipping an identity normalisation is exact (x - 0 and x / 1 round to x).
          if (a.mean != nullptr) {
            const float mu = a.mean[c];
            for (int64_t w = 0; w < W; ++w) z[w] -= mu;
          }
          if (a.std != nullptr) {
            const float sd = a.std[c];
            for (int64_t w = 0; w < W; ++w) z[w] /= sd;  // division, not a reciprocal: as the reference
          }
        }
        store_row(out + r * numel, row.data(), C, H, W, h, a.channels_last);
      }
    }
  }
}

}  // namespace

bool denoise_replicate(const DenoiseArgs& a) {
  bool ok = false;
  dispatch_dtype(a.in_dtype, [&](auto in_tag) {
    ok = dispatch_dtype(a.out_dtype, [&](auto out_tag) { denoise_impl<decltype(in_tag), decltype(out_tag)>(a); });
  });
  return ok;
}

}  // namespace core
}  // namespace diffsmooth
