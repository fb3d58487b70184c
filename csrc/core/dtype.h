// Element types of the fused kernels' tensors, and exact float32 <-> float16/bfloat16 conversions.
//
// The core is torch-free and built without -mf16c, so half types are stored as their uint16 bit patterns
// and converted here in portable integer arithmetic: round to nearest, ties to even (the rounding of
// torch's .half() / .bfloat16() and of CUDA's __float2half_rn), NaN kept quiet, overflow to infinity.
// Kernels compute in float32 and round once, at the store. CUDA kernels use the hardware conversions
// instead (cuda/dtype_cuda.cuh); ctest checks these against every midpoint of both formats.
#pragma once

#include <cstdint>
#include <cstring>

namespace diffsmooth {
namespace core {

// Codes passed from the bindings to the kernels (kept stable: the Python fallbacks never see them).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Storage wrappers: distinct types so that templates pick the right load/store.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// F. Giesen's float_to_half_fast3_rtne: normal results round by integer bias (adding 0xfff plus the
// odd bit gives ties-to-even), subnormal results by one float addition that aligns the 10 mantissa bits
// at the bottom of a float (float addition itself rounds to nearest even).
inline uint16_t float_to_half_bits(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u >= 0x47800000u) {  // >= 65536 (or inf/NaN): 65520 .. 65536 reach inf through the normal path
    return static_cast<uint16_t>(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));
  }
  if (u < 0x38800000u) {  // below 2**-14: the half is subnormal or zero
    const uint32_t magic = 0x3f000000u;  // 0.5f: its ulp is 2**-24, the half subnormal step
    return static_cast<uint16_t>(sign | (float_bits(bits_float(u) + bits_float(magic)) - magic));
  }
  const uint32_t odd = (u >> 13) & 1u;
  u += 0xc8000fffu + odd;  // rebias the exponent (127 -> 15) and round
  return static_cast<uint16_t>(sign | (u >> 13));
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {  // zero or subnormal: mant * 2**-24, exact in float
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t float_to_bfloat16_bits(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // ties to even; carries into the exponent (and to inf) as it should
  return static_cast<uint16_t>(u >> 16);
}

inline float bfloat16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

inline float load(const float* p) { return *p; }
inline float load(const Half* p) { return half_bits_to_float(p->bits); }
inline float load(const BFloat16* p) { return bfloat16_bits_to_float(p->bits); }
inline void store(float* p, float v) { *p = v; }
inline void store(Half* p, float v) { p->bits = float_to_half_bits(v); }
inline void store(BFloat16* p, float v) { p->bits = float_to_bfloat16_bits(v); }

// Calls f(T{}) with T the storage type of `dtype` (float, Half or BFloat16); false for an unknown code.
template <typename F>
bool dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kFloat32: f(float{}); return true;
    case kFloat16: f(Half{}); return true;
    case kBFloat16: f(BFloat16{}); return true;
    default: return false;
  }
}

}  // namespace core
}  // namespace diffsmooth
