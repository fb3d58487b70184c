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

// One W-long run of an output row, in one pass: dst[w] = (x_hat[w] + local_sigma*noise[w] - mu) / sd, in the
// reference's order of operations (noise == nullptr: no noise term). Division, not a multiplication by 1/sd:
// the values stay those of the reference.
template <typename TOut>
inline void finish_run(TOut* __restrict dst, const float* __restrict x_hat, const float* __restrict noise,
                       float local_sigma, float mu, float sd, int64_t W) {
  if (noise != nullptr) {
    for (int64_t w = 0; w < W; ++w) store(dst + w, (x_hat[w] + local_sigma * noise[w] - mu) / sd);
  } else {
    for (int64_t w = 0; w < W; ++w) store(dst + w, (x_hat[w] - mu) / sd);
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
        row(static_cast<size_t>(C * W)), drawn(static_cast<size_t>(W));
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
          const float* noise = nullptr;
          if (noisy && a.local_noise != nullptr) {
            noise = a.local_noise + (a.noise_per_copy ? r : j) * numel + e0;
          } else if (noisy) {
            gaussian_noise_run(drawn.data(), W, a.seed, a.offset + static_cast<uint64_t>(r * numel + e0), a.stream);
            noise = drawn.data();
          }
          // Identity normalisation as 0 and 1 is exact (x - 0 and x / 1 round to x).
          const float mu = a.mean != nullptr ? a.mean[c] : 0.0f, sd = a.std != nullptr ? a.std[c] : 1.0f;
          // NCHW: straight into the output (one pass, no row copy); channels_last: into the row buffer,
          // transposed by store_row below.
          if (a.channels_last) {
            finish_run(row.data() + c * W, x_hat.data() + c * W, noise, local_sigma, mu, sd, W);
          } else {
            finish_run(out + r * numel + e0, x_hat.data() + c * W, noise, local_sigma, mu, sd, W);
          }
        }
        if (a.channels_last) store_row(out + r * numel, row.data(), C, H, W, h, true);
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
