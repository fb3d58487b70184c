// Row stores shared by the fused CPU kernels (internal to csrc/core).
#pragma once

#include <cstdint>

#include "dtype.h"

namespace diffsmooth {
namespace core {

// Writes row h of one image: vals holds [C][W] floats in logical order; img points at the image (C*H*W
// elements) in NCHW or, when channels_last, NHWC memory order. One rounding per element, here.
template <typename T>
inline void store_row(T* img, const float* vals, int64_t C, int64_t H, int64_t W, int64_t h, bool channels_last) {
  if (channels_last) {
    T* dst = img + h * W * C;
    for (int64_t w = 0; w < W; ++w)
      for (int64_t c = 0; c < C; ++c) store(dst + w * C + c, vals[c * W + w]);
  } else {
    for (int64_t c = 0; c < C; ++c) {
      T* dst = img + (c * H + h) * W;
      const float* src = vals + c * W;
      for (int64_t w = 0; w < W; ++w) store(dst + w, src[w]);
    }
  }
}

}  // namespace core
}  // namespace diffsmooth
