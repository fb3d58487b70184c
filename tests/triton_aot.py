"""Compile the project's Triton kernels ahead of time for an sm_90 GPU, with no GPU present.

Run as ``python -m tests.triton_aot KERNEL`` in a process without TRITON_INTERPRET (triton reads it at import;
tests/test_triton_compile.py does this). The interpreter that runs the kernels in the CPU tests accepts code the
real compiler rejects, so this is the only check that a kernel builds before the first GPU run.

The launches are not written out by hand: each kernel's ``run`` is swapped for a recorder and its own Python
wrapper is called, so the argument list, dtypes and constexpr flags are exactly what a GPU run would pass. The
wrappers get meta tensors, so sizes beyond 2**31 elements cost no memory. Each recorded launch goes through the
JIT's own binder and argument packing (private triton 3.x API: create_function_from_signature,
JITFunction._pack_args) to get what the JIT keys its cache on: int widths (i32, i64, or u64 from 2**63 on), ints
equal to 1 folded into constants, 16-divisibility of ints and pointers, the constexprs. Every distinct one is
compiled to a cubin. One JSON line per variant goes to stdout: its signature, constants, ok or the error, and the
registers and spills ptxas reported (it only runs on a cache miss: give the process an empty TRITON_CACHE_DIR).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import sys

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BIG = 2**31 + 16  # an element count past int32: sizes and offsets become i64

# Philox counters (seed, offset, stream): small values (i32), values equal to 1, and values at the type limits:
# a seed or stream from 2**63 is u64 on the Python side, a stream word from 2**31 is i64, an offset past 2**31 too.
COUNTERS = [(0, 0, 0), (1, 1, 1 + 2**32), (12345, 2**31 + 5, 2**31), (2**63 + 7, 2**40, 2**64 - 1), (2**40, 16, 2**33)]


class _Pointer:
    """What the JIT sees of a tensor argument: its dtype, and its address for the 16-byte alignment check (a meta
    tensor has none; the caching allocator aligns bases, so a view is aligned as its storage offset)."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self._address = t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self._address


def meta(*shape, dtype=torch.float32, channels_last=False) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=fmt)


def record(kernel, launch) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) of every launch of ``kernel`` that ``launch()`` makes through the wrappers."""
    calls = []

    def recorder(*args, grid, warmup, **kwargs):
        calls.append((tuple(_Pointer(a) if isinstance(a, torch.Tensor) else a for a in args), kwargs))

    kernel.run = recorder  # JITFunction.__getitem__ looks run up on the instance
    try:
        launch()
    finally:
        del kernel.run
    return calls


def compile_all(kernel, launch) -> int:
    """Compile every distinct specialisation of the recorded launches; print one JSON line each; count failures."""
    backend = make_backend(TARGET)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's log is printed: registers and spills, per variant
    seen, failures = set(), 0
    for args, kwargs in record(kernel, launch):
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
        names = list(signature)
        consts = {names[k[0]]: v for k, v in constexprs.items()}
        divisible = sorted(names[k[0]] for k, v in attrs.items() if v)
        key = json.dumps([signature, {n: str(v) for n, v in consts.items()}, divisible, kwargs.get("num_warps")])
        if key in seen:
            continue
        seen.add(key)
        row = {"signature": {n: t for n, t in signature.items() if t != "constexpr"}, "constexprs": consts,
               "divisible_by_16": divisible, "num_warps": kwargs.get("num_warps", 4)}
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGET,
                                          options=options.__dict__)
            row["ok"] = bool(compiled.asm["cubin"])
        except Exception as e:  # noqa: BLE001 - every variant is tried; the test prints what failed
            row["ok"], row["error"] = False, f"{type(e).__name__}: {e}"[-4000:]
        regs = re.search(r"Used (\d+) registers", log.getvalue())
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
        row["registers"] = int(regs.group(1)) if regs else None
        row["spill_bytes"] = int(spills.group(1)) + int(spills.group(2)) if spills else None
        failures += not row["ok"]
        print(json.dumps(row, default=str), flush=True)
    return failures


# --- the launches of each kernel, through its wrapper --------------------------------------------------------


def noise_launches():
    from diffsmooth_fast.ops.triton.noise import gaussian_noise_triton

    for numel, (seed, offset, stream) in itertools.product([1, 3 * 32 * 32, BIG], COUNTERS):
        gaussian_noise_triton(meta(numel), seed, offset, stream)


def noisy_input_launches():
    from diffsmooth_fast.ops.triton.noisy_input import noisy_input_triton

    # Every flag combination: output dtype, memory format, given noise or drawn, affine (DDS) or plain (Cohen).
    for dtype, channels_last, has_noise, affine in itertools.product(DTYPES, [False, True], [False, True],
                                                                     [False, True]):
        noise = meta(8, 3, 32, 32) if has_noise else None
        noisy_input_triton(meta(8, 3, 32, 32, dtype=dtype, channels_last=channels_last), meta(3, 32, 32), noise,
                           0.25, 0.9, affine, 7, 0, 3)
    # Drawn noise at every counter kind; a grayscale image (channels == 1); a batch past 2**31 elements.
    for seed, offset, stream in COUNTERS:
        noisy_input_triton(meta(8, 3, 32, 32), meta(3, 32, 32), None, 0.25, 0.9, True, seed, offset, stream)
    noisy_input_triton(meta(4, 1, 28, 28, channels_last=True), meta(1, 28, 28), None, 0.5, 0.9, True, 1, 0, 0)
    for channels_last in (False, True):
        noisy_input_triton(meta(BIG // (3 * 224 * 224) + 1, 3, 224, 224, dtype=torch.float16,
                                channels_last=channels_last), meta(3, 224, 224), None, 0.5, 0.9, True, 2**63, BIG, 5)


def denoise_launches():
    from diffsmooth_fast.ops.triton.denoise import denoise_replicate_triton

    def run(b, c, hw, m, *, noise, mean, std, channels_last, in_dtype=torch.float32, out_dtype=torch.float32,
            counters=(7, 0, 3), input_channels_last=None):
        input_channels_last = channels_last if input_channels_last is None else input_channels_last
        x_t = meta(b, c, hw, hw, dtype=in_dtype, channels_last=input_channels_last)
        eps = meta(b, 2 * c, hw, hw, dtype=in_dtype, channels_last=input_channels_last)[:, :c]  # learn_sigma
        local = {"none": None, "drawn": None, "shared": meta(m, c, hw, hw), "per_copy": meta(b * m, c, hw, hw)}[noise]
        out = meta(b * m, c, hw, hw, dtype=out_dtype, channels_last=channels_last)
        denoise_replicate_triton(out, x_t, eps, local, meta(c) if mean else None, meta(c) if std else None, m, 1.1,
                                 0.4, 0.0 if noise == "none" else 0.25, *counters)

    # Every combination of the noise source, normalisation, output memory format and output dtype; the input
    # dtype changes with each flag combination (so all 9 input/output pairs occur): it only changes two loads.
    flags = itertools.product(["none", "shared", "per_copy", "drawn"], [False, True], [False, True], [False, True],
                              DTYPES)
    for i, (noise, mean, std, channels_last, out_dtype) in enumerate(flags):
        run(4, 3, 32, 5, noise=noise, mean=mean, std=std, channels_last=channels_last, in_dtype=DTYPES[i // 3 % 3],
            out_dtype=out_dtype)
    for counters in COUNTERS:
        run(4, 3, 32, 5, noise="drawn", mean=True, std=True, channels_last=False, counters=counters)
    run(4, 3, 32, 1, noise="none", mean=False, std=False, channels_last=True)  # DDS: m = 1
    run(4, 3, 32, 5, noise="drawn", mean=True, std=True, channels_last=True, input_channels_last=False)
    run(4, 1, 28, 5, noise="drawn", mean=True, std=True, channels_last=False)  # grayscale: channels == 1
    run(BIG // (3 * 224 * 224) + 1, 3, 224, 2, noise="drawn", mean=True, std=True, channels_last=True,
        in_dtype=torch.bfloat16, out_dtype=torch.bfloat16, counters=(2**63, BIG, 2**40))


def vote_launches():
    from diffsmooth_fast.ops.triton.vote import vote_triton

    for dtype, m, classes in itertools.product(DTYPES, [1, 8], [2, 10, 1000]):
        vote_triton(meta(classes, dtype=torch.int64), meta(16 * m, classes, dtype=dtype), m)


def group_norm_launches():
    from diffsmooth_fast.ops.triton.groupnorm import group_norm_silu_triton

    # UNet layers: one-read groups (CIFAR-10; 7x7 for a block larger than the group) and multi-block ones
    # (ImageNet, 16 channels x 64 x 64 a group).
    for dtype, channels_last, (c, hw), (scale, shift), silu in itertools.product(
            DTYPES, [False, True], [(128, 32), (384, 8), (96, 7), (256, 64)],
            [(False, False), (True, True), (True, False)], [False, True]):
        ss = meta(4, 2 * c, dtype=dtype)  # a UNet's scale and shift are halves of one [B, 2C] projection
        group_norm_silu_triton(meta(4, c, hw, hw, dtype=dtype, channels_last=channels_last),
                               meta(4, c, hw, hw, dtype=dtype, channels_last=channels_last), 32, meta(c, dtype=dtype),
                               meta(c, dtype=dtype), 1e-5, ss[:, :c] if scale else None, ss[:, c:] if shift else None,
                               silu)


def _kernels():
    from diffsmooth_fast.ops.triton import denoise, groupnorm, noise, noisy_input, vote

    return {"noise": (noise._gaussian_noise_kernel, noise_launches),
            "noisy_input": (noisy_input._noisy_input_kernel, noisy_input_launches),
            "denoise": (denoise._denoise_kernel, denoise_launches),
            "vote": (vote._vote_kernel, vote_launches),
            "group_norm": (groupnorm._group_norm_silu_kernel, group_norm_launches)}


if __name__ == "__main__":
    kernel, launches = _kernels()[sys.argv[1]]
    sys.exit(1 if compile_all(kernel, launches) else 0)
