// A vectorisable exp for softmax arguments (internal to csrc/core), unit-tested by ctest against double exp.
#pragma once

#include <cstdint>
#include <cstring>

namespace diffsmooth {
namespace core {

// exp(x) for x = l - max(row) in [-inf, 0], or NaN, in straight-line code that vectorises (std::exp is a
// scalar libm call per element: it was 90% of the kernel's time). Cephes' expf: x = n*ln2 + r with
// |r| <= ln2/2 (ln2 split in two so n*ln2 is exact), a degree-7 polynomial for exp(r), then 2**n through the
// exponent bits; within 1-2 ulp of std::exp, as close as torch's own vectorised exp, and the vote only needs
// the argmax. Below -87.33 (where 2**n would leave the normal range) the result is 0: torch gives a subnormal
// (or 0) there, a difference below 1.2e-38 in a probability. NaN stays NaN (every select keeps it, and NaN
// times any scale is NaN); -inf gives 0. No float->int conversion: it would be undefined for NaN.
inline float exp_nonpositive(float x) {
  constexpr float kLow = -87.33654f;     // ln(2**-126)
  constexpr float kRound = 12582912.0f;  // 1.5 * 2**23: adding it rounds to an integer held in the low bits
  const float xc = x < kLow ? kLow : x;
  const float k = xc * 1.44269504088896341f + kRound;
  const float n = k - kRound;  // round(x / ln 2), an integer in [-126, 0]
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t kb;
  std::memcpy(&kb, &k, sizeof kb);
  // The low mantissa bits of k hold n + 2**22; unsigned arithmetic: no overflow (NaN bits give garbage, unused).
  const uint32_t scale_bits = (kb - 0x4b400000u + 127u) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  const float y = p * scale;
  return x < kLow ? 0.0f : y;
}

}  // namespace core
}  // namespace diffsmooth
