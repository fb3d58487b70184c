#include "vote.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "dtype.h"
#include "fast_exp.h"

namespace diffsmooth {
namespace core {
namespace {

// Largest of l[0..K), skipping NaN. Four running maxima: one chain of dependent maxss would cost its latency
// per element (a fifth of the kernel's time at K = 10).
inline float row_max(const float* l, int64_t K) {
  float mx[4] = {-std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                 -std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  int64_t k = 0;
  for (; k + 4 <= K; k += 4)
    for (int i = 0; i < 4; ++i) mx[i] = l[k + i] > mx[i] ? l[k + i] : mx[i];
  for (; k < K; ++k) mx[0] = l[k] > mx[0] ? l[k] : mx[0];
  const float a = mx[0] > mx[1] ? mx[0] : mx[1], b = mx[2] > mx[3] ? mx[2] : mx[3];
  return a > b ? a : b;
}

// Samples voted per block: their logits (as float32) fit in L1 with room to spare.
constexpr int64_t kBlockValues = 2048;

// Votes of `samples` consecutive samples into winners[]. rows: their samples*m rows of K logits; t (values of
// the block) and row_inv (one per row) are scratch.
template <typename T>
void vote_block(const T* rows, int64_t samples, int64_t m, int64_t K, float* t, float* row_inv, float* acc,
                int64_t* winners) {
  const int64_t nrows = samples * m, n = nrows * K;
  for (int64_t i = 0; i < n; ++i) t[i] = load(rows + i);
  // Softmax as torch computes it: exp(l - max) / sum. A NaN (or an all -inf / any +inf row) makes the whole
  // row NaN, as in torch (max skips a NaN, but NaN - max is NaN and so is the row's sum), and the argmax below
  // then picks the first NaN, as torch.argmax does.
  for (int64_t r = 0; r < nrows; ++r) {
    float* l = t + r * K;
    const float mx = row_max(l, K);
    for (int64_t k = 0; k < K; ++k) l[k] -= mx;
  }
  for (int64_t i = 0; i < n; ++i) t[i] = exp_nonpositive(t[i]);  // the one vectorised pass over every value
  for (int64_t r = 0; r < nrows; ++r) {
    const float* p = t + r * K;
    float sum = 0.0f;
    for (int64_t k = 0; k < K; ++k) sum += p[k];
    row_inv[r] = 1.0f / sum;  // torch's softmax multiplies by the reciprocal too
  }
  const float mf = static_cast<float>(m);
  for (int64_t s = 0; s < samples; ++s) {
    for (int64_t k = 0; k < K; ++k) acc[k] = 0.0f;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t r = s * m + j;
      const float* p = t + r * K;
      const float inv = row_inv[r];
      for (int64_t k = 0; k < K; ++k) acc[k] += p[k] * inv;
    }
    // Divide by m as the reference's mean does: rounding can merge two close sums into a tie, which the
    // first index must then win.
    int64_t best = 0;
    float best_v = acc[0] / mf;
    for (int64_t k = 1; k < K && !std::isnan(best_v); ++k) {
      const float v = acc[k] / mf;
      if (v > best_v || std::isnan(v)) {
        best = k;
        best_v = v;
      }
    }
    winners[s] = best;
  }
}

template <typename T>
void vote_impl(const VoteArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t K = a.classes, m = a.m;
  if (a.batch <= 0 || K <= 0 || m <= 0) return;  // nothing to vote on (the bindings reject K = 0, m = 0)
  // Blocks of whole samples; a sample larger than a block (ImageNet: K = 1000) is a block by itself.
  const int64_t per_block = std::max<int64_t>(1, kBlockValues / (m * K));
  const int64_t blocks = (a.batch + per_block - 1) / per_block;
  const int64_t block_values = per_block * m * K;
  std::vector<int64_t> winners(static_cast<size_t>(a.batch));
  // Threads only for work that amortises waking them: a CIFAR batch (250 x 5 x 10 logits) takes ~20 us on
  // one core, about what an OpenMP fork-join costs on a loaded machine.
#pragma omp parallel if (a.batch * m * K > 65536)
  {
    std::vector<float> t(static_cast<size_t>(block_values)), row_inv(static_cast<size_t>(per_block * m)),
        acc(static_cast<size_t>(K));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t s0 = blk * per_block, samples = std::min(per_block, a.batch - s0);
      vote_block(logits + s0 * m * K, samples, m, K, t.data(), row_inv.data(), acc.data(), winners.data() + s0);
    }
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
