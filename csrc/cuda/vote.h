// Launcher of the vote CUDA kernel. Plain types only (see noise.h): the argument struct is the CPU kernel's,
// with device pointers.
#pragma once

#include "../core/vote.h"

namespace diffsmooth {
namespace cuda {

// The most classes the kernel takes: it keeps the m-row softmax sums of one sample in shared memory, within
// the 48 KB a block gets without opting in to more.
constexpr int64_t kVoteMaxClasses = 12000;  // 48 KB of shared memory, less the static part

// Increments a.counts on the CUDA stream `cuda_stream` (a cudaStream_t as void*), with no host sync.
// Returns 0 or a cudaError_t code (cudaErrorInvalidValue for more than kVoteMaxClasses classes).
int launch_vote(const core::VoteArgs& a, void* cuda_stream);

}  // namespace cuda
}  // namespace diffsmooth
