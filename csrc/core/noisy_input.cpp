#include "noisy_input.h"

#include <cstring>
#include <vector>

#include "dtype.h"
#include "noise.h"
#include "rows.h"

namespace diffsmooth {
namespace core {
namespace {

template <typename T>
void noisy_input_impl(const NoisyInputArgs& a) {
  const int64_t C = a.channels, H = a.height, W = a.width, HW = H * W, numel = C * HW;
  T* out = static_cast<T*>(a.out);
  // Scalars in locals: read through `a`, the compiler would have to assume the stores below may alias them.
  const float sigma = a.sigma, scale = a.sqrt_abar;
  const bool affine = a.affine;
  // Work item = one image row (all channels) of one copy: W-long runs of consecutive noise positions in
  // logical order, then one store pass in the output's memory order. Rows are small enough to stay in L1.
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(C * W));
#pragma omp for schedule(static)
    for (int64_t item = 0; item < a.batch * H; ++item) {
      const int64_t b = item / H, h = item % H;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t e0 = c * HW + h * W;
        float* z = row.data() + c * W;
        if (a.noise != nullptr) {
          std::memcpy(z, a.noise + b * numel + e0, sizeof(float) * W);
        } else {
          gaussian_noise_run(z, W, a.seed, a.offset + static_cast<uint64_t>(b * numel + e0), a.stream);
        }
        const float* x = a.x + e0;
        if (affine) {
          for (int64_t w = 0; w < W; ++w) z[w] = scale * (2.0f * (x[w] + sigma * z[w]) - 1.0f);
        } else {
          for (int64_t w = 0; w < W; ++w) z[w] = x[w] + sigma * z[w];
        }
      }
      store_row(out + b * numel, row.data(), C, H, W, h, a.channels_last);
    }
  }
}

}  // namespace

bool noisy_input(const NoisyInputArgs& a) {
  return dispatch_dtype(a.out_dtype, [&](auto tag) { noisy_input_impl<decltype(tag)>(a); });
}

}  // namespace core
}  // namespace diffsmooth
