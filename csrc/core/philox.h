// Philox4x32-10 counter-based generator and the Gaussian transform used by Triton's tl.randn.
//
// The same header is compiled by the host compiler (CPU kernels, ctest) and by nvcc (CUDA kernels), so
// one definition of the generator serves every backend. The arithmetic follows Triton's
// triton/language/random.py exactly: key = (seed_lo, seed_hi), counter = (c0, c1, c2, c3), ten rounds,
// first output word -> u1, second -> u2, Box-Muller cosine branch. With c1 = c2 = c3 = 0 the result equals
// tl.randn(seed, c0); the project uses c1 for offsets beyond 2**32 and (c2, c3) to name a noise stream.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DS_HOST_DEVICE inline
#endif

namespace diffsmooth {
namespace core {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;    // golden ratio, added to key word 0 after every round
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;    // sqrt(3) - 1, added to key word 1
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;  // multiplier applied to counter word 0
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;  // multiplier applied to counter word 2
constexpr int kPhiloxRounds = 10;

struct Philox4 {
  uint32_t v[4];
};

// Ten Philox rounds on counter c with key (k0, k1); returns the four output words.
DS_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                     uint32_t k1) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint64_t prod_a = static_cast<uint64_t>(kPhiloxRoundA) * c0;
    const uint64_t prod_b = static_cast<uint64_t>(kPhiloxRoundB) * c2;
    const uint32_t n0 = static_cast<uint32_t>(prod_b >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(prod_a >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(prod_b);
    c3 = static_cast<uint32_t>(prod_a);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Triton's uint_to_uniform_float for 32-bit words: reinterpret as int32, fold negatives with ~x (= -x-1,
// without the overflow of -INT32_MIN) and scale by the largest float whose product with INT32_MAX is < 1.
// The result lies in [0, 1).
DS_HOST_DEVICE float uint_to_uniform(uint32_t x) {
  int32_t s = static_cast<int32_t>(x);
  if (s < 0) s = ~s;
  return static_cast<float>(s) * 4.6566127342e-10f;
}

// Triton's pair_uniform_to_normal, cosine branch only (tl.randn discards the sine branch). u1 is floored at
// 1e-7, so |z| <= sqrt(-2 ln 1e-7) ~ 5.68: the Gaussian is truncated with probability 1e-7.
DS_HOST_DEVICE float box_muller_cos(float u1, float u2) {
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
  const float theta = 6.283185307179586f * u2;
  const float r = sqrtf(-2.0f * logf(u1));
  return r * cosf(theta);
}

// One standard normal for position `offset` of stream `stream` under `seed`.
DS_HOST_DEVICE float philox_normal(uint64_t seed, uint64_t offset, uint64_t stream) {
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                  static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return box_muller_cos(uint_to_uniform(r.v[0]), uint_to_uniform(r.v[1]));
}

}  // namespace core
}  // namespace diffsmooth
