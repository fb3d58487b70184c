// Unit tests of the fused CPU kernels and the half conversions (run by ctest). The Python tests compare the
// kernels with the PyTorch references at scale; these pin a few hand-checked values and the rounding rules.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "tests/check.h"
#include "core/denoise.h"
#include "core/dtype.h"
#include "core/fast_exp.h"
#include "core/noisy_input.h"
#include "core/philox.h"
#include "core/vote.h"

namespace {


using namespace diffsmooth::core;

// Every finite half h and its successor: the exact midpoint rounds to the even one, a float just either side
// of it to the nearer one; and every half survives the round trip through float.
void test_half_rounding() {
  bool roundtrip = true, ties = true, sides = true;
  for (uint32_t h = 0; h < 0x7c00u; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const uint16_t a = static_cast<uint16_t>(h | sign), b = static_cast<uint16_t>((h + 1) | sign);
      roundtrip = roundtrip && float_to_half_bits(half_bits_to_float(a)) == a;
      const float fa = half_bits_to_float(a), fb = half_bits_to_float(b);  // fb is inf for h = 0x7bff
      const float mid = std::isinf(fb) ? (sign ? -65520.0f : 65520.0f) : (fa + fb) / 2;  // exact in float
      ties = ties && float_to_half_bits(mid) == ((h & 1u) ? b : a);
      const float below = std::nextafter(mid, fa), above = std::nextafter(mid, fb);
      sides = sides && float_to_half_bits(below) == a && float_to_half_bits(above) == b;
    }
  }
  CHECK(roundtrip);
  CHECK(ties);
  CHECK(sides);
  CHECK(float_to_half_bits(std::numeric_limits<float>::infinity()) == 0x7c00u);
  CHECK(float_to_half_bits(-1e10f) == 0xfc00u);
  CHECK((float_to_half_bits(std::nanf("")) & 0x7e00u) == 0x7e00u);
  CHECK(float_to_half_bits(1e-10f) == 0 && float_to_half_bits(-1e-10f) == 0x8000u);
}

void test_bfloat16_rounding() {
  bool roundtrip = true, ties = true, sides = true;
  for (uint32_t h = 0; h < 0x7f80u; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const uint16_t a = static_cast<uint16_t>(h | sign), b = static_cast<uint16_t>((h + 1) | sign);
      roundtrip = roundtrip && float_to_bfloat16_bits(bfloat16_bits_to_float(a)) == a;
      const uint32_t mid_bits = (static_cast<uint32_t>(a) << 16) | 0x8000u;  // exact midpoint of a and b
      ties = ties && float_to_bfloat16_bits(bits_float(mid_bits)) == ((h & 1u) ? b : a);
      sides = sides && float_to_bfloat16_bits(bits_float(mid_bits - 1)) == a &&
              float_to_bfloat16_bits(bits_float(mid_bits + 1)) == b;
    }
  }
  CHECK(roundtrip);
  CHECK(ties);
  CHECK(sides);
  CHECK(float_to_bfloat16_bits(std::numeric_limits<float>::max()) == 0x7f80u);  // rounds up to inf
  CHECK((float_to_bfloat16_bits(std::nanf("")) & 0x7fc0u) == 0x7fc0u);
}

// 2 copies of a 2x2x3 image, both formats: each value is the formula on philox_normal at its logical position.
void test_noisy_input_positions() {
  const int64_t B = 2, C = 2, H = 2, W = 3, numel = C * H * W;
  std::vector<float> x(numel);
  for (int64_t e = 0; e < numel; ++e) x[e] = 0.05f * e;
  for (bool cl : {false, true}) {
    std::vector<float> out(B * numel, -99.0f);
    NoisyInputArgs a{out.data(), kFloat32, cl, x.data(), nullptr, B, C, H, W, 0.5f, 0.8f, true, 11, 7, 3};
    CHECK(noisy_input(a));
    bool ok = true;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t hw = 0; hw < H * W; ++hw) {
          const int64_t e = c * H * W + hw;
          const float want = 0.8f * (2.0f * (x[e] + 0.5f * philox_normal(11, 7 + b * numel + e, 3)) - 1.0f);
          const float got = out[b * numel + (cl ? hw * C + c : e)];
          ok = ok && std::fabs(got - want) <= 1e-6f;
        }
    CHECK(ok);
  }
}

// Hand-computed denoise of 4 values read through strides (eps is channel 1.. of a 2-channel tensor),
// including both clamps and a NaN that must survive; fixed noise, per-channel normalisation.
void test_denoise_values() {
  // x_t, eps: logical [1, 1, 1, 4]; eps lives interleaved at odd positions of an 8-float buffer.
  const float x_t[4] = {0.5f, 4.0f, -4.0f, std::nanf("")};
  const float eps_buf[8] = {9, 0.25f, 9, 0.0f, 9, 0.0f, 9, 0.0f};
  const float noise[8] = {1.0f, 0.0f, 0.0f, 0.0f, -1.0f, 2.0f, 0.0f, 0.0f};  // m = 2 copies
  const float mean[1] = {0.5f}, stdv[1] = {0.25f};
  std::vector<float> out(8, -99.0f);
  DenoiseArgs a{};
  a.out = out.data();
  a.out_dtype = kFloat32;
  a.x_t = x_t;
  a.eps = eps_buf + 1;
  a.in_dtype = kFloat32;
  const int64_t sx[4] = {4, 4, 4, 1}, se[4] = {8, 8, 8, 2};
  for (int i = 0; i < 4; ++i) a.x_t_strides[i] = sx[i], a.eps_strides[i] = se[i];
  a.local_noise = noise;
  a.mean = mean;
  a.std = stdv;
  a.batch = 1, a.m = 2, a.channels = 1, a.height = 1, a.width = 4;
  a.sqrt_recip_abar = 2.0f, a.sqrt_recipm1_abar = 2.0f, a.local_sigma = 0.5f;
  CHECK(denoise_replicate(a));
  // x0 = 2*x_t - 2*eps = {0.5, 8 -> 1, -8 -> -1, NaN}; x_hat = {0.75, 1, 0, NaN}
  // copy 0: + 0.5*{1,0,0,0} -> {1.25, 1, 0, NaN}; copy 1: + 0.5*{-1,2,0,0} -> {0.25, 2, 0, NaN}
  const float want[8] = {3.0f, 2.0f, -2.0f, 0.0f, -1.0f, 6.0f, -2.0f, 0.0f};
  for (int i = 0; i < 8; ++i) CHECK(i % 4 == 3 ? std::isnan(out[i]) : out[i] == want[i]);
  // sigma' = 0 and no normalisation: plain x_hat, m copies, no noise read even though a pointer is given.
  a.local_sigma = 0.0f, a.mean = nullptr, a.std = nullptr;
  CHECK(denoise_replicate(a));
  CHECK(out[0] == 0.75f && out[1] == 1.0f && out[2] == 0.0f && out[4] == 0.75f && out[6] == 0.0f);
}

// Two samples, m = 2, three classes: sample 0's copies disagree but class 2 has the larger mean softmax;
// sample 1 ties exactly between classes 0 and 1 (first wins). Counts accumulate onto what was there.
void test_vote_example() {
  const float logits[12] = {3.0f, 0.0f, 2.9f, 0.0f, 0.0f, 3.1f,  // sample 0: argmax 0 then 2; mean -> 2
                            1.0f, 1.0f, 0.0f, 1.0f, 1.0f, 0.0f};  // sample 1: tie 0/1 -> 0
  int64_t counts[3] = {5, 0, 0};
  VoteArgs a{logits, kFloat32, 2, 2, 3, counts};
  CHECK(vote(a));
  CHECK(counts[0] == 6 && counts[1] == 0 && counts[2] == 1);
  // A NaN in a row makes that sample vote for its first NaN class, like torch.argmax.
  const float with_nan[3] = {5.0f, std::nanf(""), 1.0f};
  int64_t c2[3] = {0, 0, 0};
  VoteArgs b{with_nan, kFloat32, 1, 1, 3, c2};
  CHECK(vote(b));
  CHECK(c2[0] == 1);  // whole-row NaN softmax: the first entry is already NaN
  // bfloat16 logits (1.0, 3.0, 2.0) -> class 1.
  const BFloat16 bf[3] = {{0x3f80}, {0x4040}, {0x4000}};
  int64_t c3[3] = {0, 0, 0};
  VoteArgs c{bf, kBFloat16, 1, 1, 3, c3};
  CHECK(vote(c));
  CHECK(c3[1] == 1);
  VoteArgs bad{logits, 7, 1, 1, 3, c3};
  CHECK(!vote(bad));
}

// The vote's exp against double-precision exp: within 2 ulp on a fine grid of [-87.33, 0] (every 61st float,
// about 18 million values), exact at 0, 0 below the normal range and at -inf, NaN kept.
void test_fast_exp() {
  double worst_ulp = 0.0;
  const uint32_t lo = float_bits(-87.33f), zero_bits = float_bits(-0.0f);  // negative floats: larger bits, smaller x
  for (uint32_t u = zero_bits; u <= lo; u += 61) {
    const float x = bits_float(u);
    const double want = std::exp(static_cast<double>(x));
    const double ulp = std::nextafter(static_cast<float>(want), 1e30f) - static_cast<float>(want);
    const double err = std::fabs(exp_nonpositive(x) - want) / ulp;
    worst_ulp = err > worst_ulp ? err : worst_ulp;
  }
  std::printf("exp_nonpositive: worst error %.2f ulp\n", worst_ulp);
  CHECK(worst_ulp <= 2.0);
  CHECK(exp_nonpositive(0.0f) == 1.0f && exp_nonpositive(-0.0f) == 1.0f);
  CHECK(exp_nonpositive(-87.4f) == 0.0f && exp_nonpositive(-1e30f) == 0.0f);
  CHECK(exp_nonpositive(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(std::isnan(exp_nonpositive(std::nanf(""))));
}

}  // namespace

int main() {
  test_half_rounding();
  test_bfloat16_rounding();
  test_noisy_input_positions();
  test_denoise_values();
  test_vote_example();
  test_fast_exp();
  if (diffsmooth_tests::failures == 0) std::printf("ops tests: all checks passed\n");
  return diffsmooth_tests::failures == 0 ? 0 : 1;
}
