// Vote on CUDA: one block per sample. The block keeps the running sum over the sample's m softmax rows in
// shared memory (each thread owns a fixed set of classes, so the sums need no synchronisation), then a
// block argmax picks the winner and one thread adds it to counts with an atomic: nothing goes to the host.
#include <cuda_runtime.h>

#include <cmath>

#include "dtype_cuda.cuh"
#include "vote.h"

namespace diffsmooth {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// torch.argmax's order: a NaN beats every number, and the lower index wins a tie (or among NaNs).
__device__ __forceinline__ bool beats(float v, int64_t k, float best_v, int64_t best_k) {
  const bool vn = isnan(v), bn = isnan(best_v);
  if (vn != bn) return vn;
  if (!vn && v != best_v) return v > best_v;
  return k < best_k;
}

// Max (ignoring NaN, as the CPU kernel: a NaN still poisons the row through exp) or sum over the block.
template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  for (int d = 16; d > 0; d >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, d);
    v = kMax ? (o > v ? o : v) : v + o;
  }
  __syncthreads();  // scratch may still be read by the previous reduction
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = scratch[0];
  for (int i = 1; i < kWarps; ++i) v = kMax ? (scratch[i] > v ? scratch[i] : v) : v + scratch[i];
  return v;
}

template <typename T>
__global__ void vote_kernel(core::VoteArgs a) {
  extern __shared__ float acc[];  // [classes]
  __shared__ float scratch[kWarps];
  __shared__ float best_vs[kWarps];
  __shared__ int64_t best_ks[kWarps];
  const int64_t K = a.classes, b = blockIdx.x;
  const T* rows = static_cast<const T*>(a.logits) + b * a.m * K;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) acc[k] = 0.0f;
  for (int64_t j = 0; j < a.m; ++j) {
    const T* l = rows + j * K;
    float mx = -INFINITY;
    for (int64_t k = threadIdx.x; k < K; k += kThreads) {
      const float v = dload(l + k);
      mx = v > mx ? v : mx;
    }
    mx = block_reduce<true>(mx, scratch);
    float sum = 0.0f;
    for (int64_t k = threadIdx.x; k < K; k += kThreads) sum += expf(dload(l + k) - mx);
    sum = block_reduce<false>(sum, scratch);
    for (int64_t k = threadIdx.x; k < K; k += kThreads) acc[k] += expf(dload(l + k) - mx) / sum;
  }
  const float mf = static_cast<float>(a.m);
  float best_v = -INFINITY;
  int64_t best_k = K;  // loses to any real class
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    const float v = acc[k] / mf;
    if (beats(v, k, best_v, best_k)) best_v = v, best_k = k;
  }
  for (int d = 16; d > 0; d >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best_v, d);
    const int64_t ok = __shfl_xor_sync(0xffffffffu, best_k, d);
    if (beats(ov, ok, best_v, best_k)) best_v = ov, best_k = ok;
  }
  if (threadIdx.x % 32 == 0) best_vs[threadIdx.x / 32] = best_v, best_ks[threadIdx.x / 32] = best_k;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < kWarps; ++i)
      if (beats(best_vs[i], best_ks[i], best_v, best_k)) best_v = best_vs[i], best_k = best_ks[i];
    atomicAdd(reinterpret_cast<unsigned long long*>(a.counts + best_k), 1ull);
  }
}

}  // namespace

int launch_vote(const core::VoteArgs& a, void* cuda_stream) {
  if (a.batch <= 0 || a.m <= 0 || a.classes <= 0) return 0;
  if (a.classes > kVoteMaxClasses || a.batch > 2147483647) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t s = static_cast<cudaStream_t>(cuda_stream);
  const size_t smem = static_cast<size_t>(a.classes) * sizeof(float);
  const bool known = core::dispatch_dtype(a.dtype, [&](auto tag) {
    vote_kernel<decltype(tag)><<<static_cast<unsigned>(a.batch), kThreads, smem, s>>>(a);
  });
  return known ? static_cast<int>(cudaGetLastError()) : static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace diffsmooth
