// Checks and kernel arguments of the fused ops, shared by the CPU (bindings.cpp) and CUDA (bindings_cuda.cpp)
// bindings, so both validate the same way and the CUDA file, which cannot be compiled without a CUDA torch,
// is a thin mirror: it adds the device guard and calls the launcher instead of the core function.
#pragma once

#include <torch/extension.h>

#include "core/denoise.h"
#include "core/dtype.h"
#include "core/noisy_input.h"
#include "core/vote.h"

namespace diffsmooth {
namespace bindings {

inline int dtype_code(const char* op, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return core::kFloat32;
    case at::kHalf: return core::kFloat16;
    case at::kBFloat16: return core::kBFloat16;
    default: TORCH_CHECK(false, op, ": ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return -1;
}

inline void check_device(const char* op, const at::Tensor& out, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == out.device(), op, ": ", name, " must be on ", out.device(), " like out, got ", t.device());
}

// A float32 tensor the kernels read as a flat array.
inline void check_f32(const char* op, const at::Tensor& out, const at::Tensor& t, const char* name) {
  check_device(op, out, t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), op, ": ", name,
              " must be a contiguous float32 tensor, got ", t.scalar_type());
}

// True when out (4-d) is channels_last; false when NCHW-contiguous (when both hold the layouts coincide).
inline bool channels_last(const char* op, const at::Tensor& out) {
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-d [N, C, H, W], got ", out.sizes());
  if (out.is_contiguous()) return false;
  TORCH_CHECK(out.is_contiguous(at::MemoryFormat::ChannelsLast), op,
              ": out must be contiguous or channels_last, got strides ", out.strides());
  return true;
}

inline core::NoisyInputArgs noisy_input_args(at::Tensor& out, const at::Tensor& x,
                                             const c10::optional<at::Tensor>& noise, double sigma,
                                             double sqrt_abar, bool affine, int64_t seed, int64_t offset,
                                             int64_t stream) {
  const char* op = "noisy_input_";
  const bool cl = channels_last(op, out);
  TORCH_CHECK(x.dim() == 3 && x.sizes() == out.sizes().slice(1), op, ": x must be [C, H, W] matching out ",
              out.sizes(), ", got ", x.sizes());
  check_f32(op, out, x, "x");
  if (noise.has_value()) {
    check_f32(op, out, *noise, "noise");
    TORCH_CHECK(noise->sizes() == out.sizes(), op, ": noise must have out's shape ", out.sizes(), ", got ",
                noise->sizes());
  }
  TORCH_CHECK(offset >= 0, op, ": offset must be >= 0, got ", offset);
  // Schemas carry 64-bit seeds and stream ids as int64; the kernels take the bits back as uint64.
  return core::NoisyInputArgs{out.data_ptr(), dtype_code(op, "out", out), cl, x.data_ptr<float>(),
                              noise.has_value() ? noise->data_ptr<float>() : nullptr, out.size(0), out.size(1),
                              out.size(2), out.size(3), static_cast<float>(sigma), static_cast<float>(sqrt_abar),
                              affine, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                              static_cast<uint64_t>(stream)};
}

inline core::DenoiseArgs denoise_args(at::Tensor& out, const at::Tensor& x_t, const at::Tensor& eps,
                                      const c10::optional<at::Tensor>& local_noise,
                                      const c10::optional<at::Tensor>& mean, const c10::optional<at::Tensor>& std,
                                      int64_t m, double sqrt_recip_abar, double sqrt_recipm1_abar,
                                      double local_sigma, int64_t seed, int64_t offset, int64_t stream) {
  const char* op = "denoise_replicate_";
  core::DenoiseArgs a{};
  a.channels_last = channels_last(op, out);
  TORCH_CHECK(m >= 0, op, ": m must be >= 0, got ", m);
  TORCH_CHECK(x_t.dim() == 4 && eps.sizes() == x_t.sizes(), op, ": x_t and eps must both be [B, C, H, W], got ",
              x_t.sizes(), " and ", eps.sizes());
  const int64_t B = x_t.size(0), C = x_t.size(1), H = x_t.size(2), W = x_t.size(3);
  TORCH_CHECK(out.size(0) == B * m && out.sizes().slice(1) == x_t.sizes().slice(1), op, ": out must be [",
              B * m, ", ", C, ", ", H, ", ", W, "] (B*m rows), got ", out.sizes());
  check_device(op, out, x_t, "x_t");
  check_device(op, out, eps, "eps");
  TORCH_CHECK(x_t.scalar_type() == eps.scalar_type(), op, ": x_t and eps must have one dtype, got ",
              x_t.scalar_type(), " and ", eps.scalar_type());
  if (local_noise.has_value()) {
    check_f32(op, out, *local_noise, "local_noise");
    const auto n = local_noise->sizes();
    TORCH_CHECK(n.size() == 4 && (n[0] == m || n[0] == B * m) && n.slice(1) == x_t.sizes().slice(1), op,
                ": local_noise must be [m, C, H, W] or [B*m, C, H, W], got ", n);
    a.local_noise = local_noise->data_ptr<float>();
    a.noise_per_copy = n[0] != m;
  }
  for (const auto* t : {&mean, &std}) {
    if (!t->has_value()) continue;
    check_f32(op, out, **t, t == &mean ? "mean" : "std");
    TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == C, op, ": mean and std must be [C] = [", C, "], got ",
                (*t)->sizes());
  }
  TORCH_CHECK(offset >= 0, op, ": offset must be >= 0, got ", offset);
  a.out = out.data_ptr();
  a.out_dtype = dtype_code(op, "out", out);
  a.x_t = x_t.data_ptr();
  a.eps = eps.data_ptr();
  a.in_dtype = dtype_code(op, "x_t", x_t);
  for (int d = 0; d < 4; ++d) a.x_t_strides[d] = x_t.stride(d), a.eps_strides[d] = eps.stride(d);
  a.mean = mean.has_value() ? mean->data_ptr<float>() : nullptr;
  a.std = std.has_value() ? std->data_ptr<float>() : nullptr;
  a.batch = B, a.m = m, a.channels = C, a.height = H, a.width = W;
  a.sqrt_recip_abar = static_cast<float>(sqrt_recip_abar);
  a.sqrt_recipm1_abar = static_cast<float>(sqrt_recipm1_abar);
  a.local_sigma = static_cast<float>(local_sigma);
  a.seed = static_cast<uint64_t>(seed), a.offset = static_cast<uint64_t>(offset);
  a.stream = static_cast<uint64_t>(stream);
  return a;
}

inline core::VoteArgs vote_args(at::Tensor& counts, const at::Tensor& logits, int64_t m) {
  const char* op = "vote_";
  TORCH_CHECK(counts.dim() == 1 && counts.scalar_type() == at::kLong && counts.is_contiguous(), op,
              ": counts must be a contiguous int64 [K] tensor, got ", counts.scalar_type(), " ", counts.sizes());
  check_device(op, counts, logits, "logits");
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) == counts.size(0) && logits.is_contiguous(), op,
              ": logits must be a contiguous [B*m, K] tensor with K = ", counts.size(0), ", got ", logits.sizes());
  TORCH_CHECK(m >= 1 && logits.size(0) % m == 0, op, ": m must be >= 1 and divide the ", logits.size(0),
              " rows of logits, got ", m);
  TORCH_CHECK(logits.size(0) == 0 || logits.size(1) >= 1, op, ": logits must have at least one class");
  return core::VoteArgs{logits.data_ptr(), dtype_code(op, "logits", logits), logits.size(0) / m, m,
                        logits.size(1), counts.data_ptr<int64_t>()};
}

}  // namespace bindings
}  // namespace diffsmooth
