// Device loads and stores of the storage types of core/dtype.h, with the hardware conversions
// (round to nearest even, as the CPU's integer version). Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../core/dtype.h"

namespace diffsmooth {
namespace cuda {

__device__ __forceinline__ float dload(const float* p) { return *p; }
__device__ __forceinline__ float dload(const core::Half* p) { return __half2float(__ushort_as_half(p->bits)); }
__device__ __forceinline__ float dload(const core::BFloat16* p) {
  return __bfloat162float(__ushort_as_bfloat16(p->bits));
}
__device__ __forceinline__ void dstore(float* p, float v) { *p = v; }
__device__ __forceinline__ void dstore(core::Half* p, float v) { p->bits = __half_as_ushort(__float2half_rn(v)); }
__device__ __forceinline__ void dstore(core::BFloat16* p, float v) {
  p->bits = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// Blocks for a grid-stride loop over `total` elements: enough to fill any current GPU several times over,
// capped so that huge tensors do not overflow the grid dimension.
inline int grid_blocks(int64_t total, int threads) {
  const int64_t wanted = (total + threads - 1) / threads;
  return static_cast<int>(wanted < 65536 ? wanted : 65536);
}

}  // namespace cuda
}  // namespace diffsmooth
