// Unit tests of the torch-free core (run by ctest). A failing check prints where and exits non-zero.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "tests/check.h"
#include "core/noise.h"
#include "core/philox.h"

namespace {


using diffsmooth::core::Philox4;
using diffsmooth::core::philox4x32_10;

// Known-answer vectors of Philox4x32-10 published with Random123 (kat_vectors).
void test_philox_known_answers() {
  Philox4 r = philox4x32_10(0, 0, 0, 0, 0, 0);
  CHECK(r.v[0] == 0x6627e8d5u && r.v[1] == 0xe169c58du && r.v[2] == 0xbc57ac4cu && r.v[3] == 0x9b00dbd8u);
  r = philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  CHECK(r.v[0] == 0x408f276du && r.v[1] == 0x41c83b0eu && r.v[2] == 0xa20bc7c6u && r.v[3] == 0x6d5451fdu);
  r = philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  CHECK(r.v[0] == 0xd16cfe09u && r.v[1] == 0x94fdccebu && r.v[2] == 0x5001e420u && r.v[3] == 0x24126ea1u);
}

void test_uniform_range() {
  using diffsmooth::core::uint_to_uniform;
  CHECK(uint_to_uniform(0u) == 0.0f);
  CHECK(uint_to_uniform(0xffffffffu) == 0.0f);  // int32 -1 folds to 0
  CHECK(uint_to_uniform(0x7fffffffu) < 1.0f);
  CHECK(uint_to_uniform(0x80000000u) < 1.0f);  // INT32_MIN folds to INT32_MAX without overflow
  CHECK(uint_to_uniform(0x7fffffffu) > 0.9999f);
}

// Element i of a fill starting at `offset` equals element offset + i of a fill starting at 0, including
// across the 2**32 boundary of the low counter word.
void test_offsets_compose() {
  const uint64_t seed = 0x0123456789abcdefull, stream = 7;
  std::vector<uint32_t> all(4 * 64), part(4 * 32);
  const uint64_t base = 0xffffffffull - 16;  // crosses into the high counter word
  diffsmooth::core::philox_words(all.data(), 64, seed, base, stream);
  diffsmooth::core::philox_words(part.data(), 32, seed, base + 20, stream);
  bool same = true;
  for (int i = 0; i < 4 * 32; ++i) same = same && part[i] == all[4 * 20 + i];
  CHECK(same);
  // Different streams and different seeds give different words.
  std::vector<uint32_t> other(4 * 64);
  diffsmooth::core::philox_words(other.data(), 64, seed, base, stream + 1);
  CHECK(other[0] != all[0]);
  diffsmooth::core::philox_words(other.data(), 64, seed + 1, base, stream);
  CHECK(other[0] != all[0]);
}

void test_normal_moments() {
  const int64_t n = 1 << 21;
  std::vector<float> z(n);
  diffsmooth::core::gaussian_noise_f32(z.data(), n, 42, 0, 0);
  double s1 = 0, s2 = 0, s4 = 0, lag = 0;
  for (int64_t i = 0; i < n; ++i) {
    s1 += z[i];
    s2 += double(z[i]) * z[i];
    s4 += std::pow(double(z[i]), 4);
    if (i + 1 < n) lag += double(z[i]) * z[i + 1];
  }
  const double mean = s1 / n, var = s2 / n - mean * mean, kurt = s4 / n, corr = lag / (n - 1);
  // Standard errors at n = 2**21: mean 7e-4, variance 1e-3, fourth moment 7e-3, lag-1 correlation 7e-4.
  CHECK(std::fabs(mean) < 5e-3);
  CHECK(std::fabs(var - 1.0) < 7e-3);
  CHECK(std::fabs(kurt - 3.0) < 5e-2);
  CHECK(std::fabs(corr) < 5e-3);
  bool finite_bounded = true;
  for (float v : z) finite_bounded = finite_bounded && std::isfinite(v) && std::fabs(v) < 5.7f;
  CHECK(finite_bounded);
}

}  // namespace

int main() {
  test_philox_known_answers();
  test_uniform_range();
  test_offsets_compose();
  test_normal_moments();
  if (diffsmooth_tests::failures == 0) std::printf("core tests: all checks passed\n");
  return diffsmooth_tests::failures == 0 ? 0 : 1;
}
