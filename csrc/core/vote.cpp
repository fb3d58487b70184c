#include "vote.h"

#include <cmath>
#include <limits>
#include <vector>

#include "dtype.h"

namespace diffsmooth {
namespace core {
namespace {

// The winning class of one sample: `rows` are its m rows of logits; acc and p are scratch of K floats.
template <typename T>
int64_t vote_one(const T* rows, int64_t m, int64_t K, float* acc, float* p) {
  for (int64_t k = 0; k < K; ++k) acc[k] = 0.0f;
  for (int64_t j = 0; j < m; ++j) {
    const T* l = rows + j * K;
    // Softmax as torch computes it: exp(l - max) / sum. A NaN (or an all -inf / any +inf row) makes the
    // whole row NaN, as in torch, and the argmax below then picks the first NaN, as torch.argmax does.
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t k = 0; k < K; ++k) {
      const float v = load(l + k);
      mx = v > mx ? v : mx;
    }
    float sum = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      p[k] = std::exp(load(l + k) - mx);
      sum += p[k];
    }
    for (int64_t k = 0; k < K; ++k) acc[k] += p[k] / sum;
  }
  // Divide by m as the reference's mean does: rounding can merge two close sums into a tie, which the
  // first index must then win.
  const float mf = static_cast<float>(m);
  int64_t best = 0;
  float best_v = acc[0] / mf;
  for (int64_t k = 1; k < K && !std::isnan(best_v); ++k) {
    const float v = acc[k] / mf;
    if (v > best_v || std::isnan(v)) {
      best = k;
      best_v = v;
    }
  }
  return best;
}

template <typename T>
void vote_impl(const VoteArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t K = a.classes, m = a.m;
  if (a.batch <= 0 || K <= 0 || m <= 0) return;  // nothing to vote on (the bindings reject K = 0, m = 0)
  std::vector<int64_t> winners(static_cast<size_t>(a.batch));
#pragma omp parallel if (a.batch * m * K > 16384)
  {
    std::vector<float> acc(static_cast<size_t>(K)), p(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < a.batch; ++b) winners[b] = vote_one(logits + b * m * K, m, K, acc.data(), p.data());
  }
  // Serial accumulation: no atomics, and the order of increments cannot matter for integers anyway.
  for (int64_t b = 0; b < a.batch; ++b) a.counts[winners[b]] += 1;
}

}  // namespace

bool vote(const VoteArgs& a) {
  return dispatch_dtype(a.dtype, [&](auto tag) { vote_impl<decltype(tag)>(a); });
}

}  // namespace core
}  // namespace diffsmooth
