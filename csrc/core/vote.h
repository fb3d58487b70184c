// CPU kernel of the local-smoothing vote: mean softmax over each sample's m rows, argmax, one count.
#pragma once

#include <cstdint>

namespace diffsmooth {
namespace core {

struct VoteArgs {
  const void* logits;  // [batch*m, classes] contiguous of dtype; rows b*m .. b*m+m-1 belong to sample b
  int dtype;           // DType code (dtype.h)
  int64_t batch, m, classes;
  int64_t* counts;  // [classes] int64, incremented in place
};

// counts[argmax_k mean_j softmax(logits[b*m + j])_k] += 1 for every sample b. Softmax in float32; the first
// maximum wins ties and a NaN beats every number, as in torch.argmax. Returns false for an unknown dtype.
bool vote(const VoteArgs& a);

}  // namespace core
}  // namespace diffsmooth
