#include "noisy_input.h"

#include <vector>

#include "dtype.h"
#include "noise.h"
#include "rows.h"

namespace diffsmooth {
namespace core {
namespace {

// One W-long run: dst[w] = scale*(2*(x[w] + sigma*eps[w]) - 1) when affine, else x[w] + sigma*eps[w], in the
// reference's order of operations, rounded once at the store.
template <typename T>
inline void noisy_run(T* __restrict dst, const float* __restrict x, const float* __restrict eps, float sigma,
                      float scale, bool affine, int64_t W) {
  if (affine) {
    for (int64_t w = 0; w < W; ++w) store(dst + w, scale * (2.0f * (x[w] + sigma * eps[w]) - 1.0f));
  } else {
    for (int64_t w = 0; w < W; ++w) store(dst + w, x[w] + sigma * eps[w]);
  }
}

template <typename T>
void noisy_input_impl(const NoisyInputArgs& a) {
  const int64_t C = a.channels, H = a.height, W = a.width, HW = H * W, numel = C * HW;
  T* out = static_cast<T*>(a.out);
  // Scalars in locals: read through `a`, the compiler would have to assume the stores below may alias them.
  const float sigma = a.sigma, scale = a.sqrt_abar;
  const bool affine = a.affine;
  // Work item = one image row (all channels) of one copy: W-long runs of consecutive noise positions in
  // logical order. NCHW output is written in one pass; channels_last goes through a row buffer (small enough
  // to stay in L1) that store_row transposes.
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(C * W)), drawn(static_cast<size_t>(W));
#pragma omp for schedule(static)
    for (int64_t item = 0; item < a.batch * H; ++item) {
      const int64_t b = item / H, h = item % H;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t e0 = c * HW + h * W;
        const float* eps = drawn.data();
        if (a.noise != nullptr) {
          eps = a.noise + b * numel + e0;
        } else {
          gaussian_noise_run(drawn.data(), W, a.seed, a.offset + static_cast<uint64_t>(b * numel + e0), a.stream);
        }
        if (a.channels_last) {
          noisy_run(row.data() + c * W, a.x + e0, eps, sigma, scale, affine, W);
        } else {
          noisy_run(out + b * numel + e0, a.x + e0, eps, sigma, scale, affine, W);
        }
      }
      if (a.channels_last) store_row(out + b * numel, row.data(), C, H, W, h, true);
    }
  }
}

}  // namespace

bool noisy_input(const NoisyInputArgs& a) {
  return dispatch_dtype(a.out_dtype, [&](auto tag) { noisy_input_impl<decltype(tag)>(a); });
}

}  // namespace core
}  // namespace diffsmooth
