"""The counter-based Gaussian generator: every backend against the reference, Triton's tl.randn, moments."""

from __future__ import annotations

import os

import pytest
import torch

from diffsmooth_fast.ops import gaussian_noise, resolve_backend, unavailable_reason
from diffsmooth_fast.ops.reference import gaussian_noise_ref, philox_counters, philox_words_ref

from .conftest import HAS_GPU, has_triton

# Float transforms (log, cos, sqrt) come from different math libraries per backend; the integers are
# exact, so normals agree to a few float32 ulps of values bounded by 5.7.
ATOL = 2e-6

CASES = [
    # (seed, offset, stream, shape): odd sizes, offsets across the 2**32 boundary, 64-bit seeds and streams
    (0, 0, 0, (7,)),
    (42, 5, 0, (3, 5, 7)),
    (2**64 - 1, 2**32 - 37, 2**64 - 3, (2, 3, 11)),
    (123456789, 2**40 + 3, (2 << 32) | 17, (1, 1, 1, 1)),
    (7, 0, 1, (0, 4)),
]

needs_triton = pytest.mark.skipif(
    not has_triton() or (not HAS_GPU and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="needs triton (on a GPU, or under TRITON_INTERPRET=1)",
)


def test_philox_reference_known_answers():
    # Random123's published Philox4x32-10 vectors (also checked in C++ by ctest).
    def words(ctr, key):
        c = [torch.tensor([v], dtype=torch.int64) for v in ctr]
        return [int(w) for w in philox_words_ref(*c, key[0] | (key[1] << 32))]

    assert words([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert words([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    pi = [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]
    assert words(pi, [0xA4093822, 0x299F31D0]) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("seed,offset,stream,shape", CASES)
def test_cpp_matches_reference(seed, offset, stream, shape):
    if unavailable_reason("cpp", "cpu"):
        pytest.skip(unavailable_reason("cpp", "cpu"))
    got = gaussian_noise(shape, seed, offset, stream=stream, backend="cpp")
    want = gaussian_noise_ref(shape, seed, offset, stream=stream)
    assert got.shape == torch.Size(shape) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@needs_triton
@pytest.mark.parametrize("seed,offset,stream,shape", CASES)
def test_triton_matches_cpp_and_reference(seed, offset, stream, shape):
    device = "cuda" if HAS_GPU else "cpu"
    got = gaussian_noise(shape, seed, offset, stream=stream, backend="triton", device=device).cpu()
    torch.testing.assert_close(got, gaussian_noise_ref(shape, seed, offset, stream=stream), atol=ATOL, rtol=0)
    if unavailable_reason("cpp", "cpu") is None:
        cpp = gaussian_noise(shape, seed, offset, stream=stream, backend="cpp")
        torch.testing.assert_close(got, cpp, atol=ATOL, rtol=0)


@needs_triton
def test_stream_zero_is_triton_randn():
    """The generator is Triton's own tl.randn when the stream is 0, including 64-bit offsets."""
    import triton
    import triton.language as tl

    @triton.jit
    def randn_kernel(out_ptr, seed, offset, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        z = tl.randn(seed, i.to(tl.int64) + offset)
        tl.store(out_ptr + i, z, mask=i < n)

    device = "cuda" if HAS_GPU else "cpu"
    for seed, offset in [(0, 0), (2**63 + 11, 2**33 - 100), (987654321, 17)]:
        n = 300
        out = torch.empty(n, device=device)
        randn_kernel[(1,)](out, seed, offset, n, BLOCK=512)
        torch.testing.assert_close(out.cpu(), gaussian_noise_ref((n,), seed, offset), atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_offsets_compose(backend):
    """Element i of a draw at offset o is element o + i of a draw at offset 0: noise is indexed by position."""
    if unavailable_reason(backend, "cpu"):
        pytest.skip(unavailable_reason(backend, "cpu"))
    whole = gaussian_noise((6, 50), 9, 2**32 - 120, stream=5, backend=backend).flatten()
    for start, stop in [(0, 1), (17, 117), (119, 121), (250, 300)]:
        part = gaussian_noise((stop - start,), 9, 2**32 - 120 + start, stream=5, backend=backend)
        assert torch.equal(part, whole[start:stop])


def test_streams_and_seeds_differ():
    base = gaussian_noise((1000,), 1, 0, stream=0)
    for other in [
        gaussian_noise((1000,), 1, 0, stream=1),
        gaussian_noise((1000,), 1, 0, stream=1 << 32),
        gaussian_noise((1000,), 2, 0, stream=0),
        gaussian_noise((1000,), 1 << 32, 0, stream=0),
        gaussian_noise((1000,), 1, 1000, stream=0),
    ]:
        # Independent draws: no shared values and near-zero correlation.
        assert not torch.isin(other, base).any()
        assert abs(torch.corrcoef(torch.stack([base, other]))[0, 1]) < 0.15


def test_moments_and_neighbour_correlation():
    z = gaussian_noise((1 << 20,), 2024, 0).double()  # cpp when built, else the reference
    n = z.numel()
    se = 1.0 / n**0.5
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1.0) < 5 * 2**0.5 * se
    assert abs((z**4).mean() - 3.0) < 5 * 96**0.5 * se  # kurtosis of N(0,1) is 3, variance of z^4 is 96
    for lag in (1, 2, 3, 4, 1024):
        assert abs((z[:-lag] * z[lag:]).mean()) < 5 * se
    # Empirical CDF close to Phi (Kolmogorov-Smirnov statistic).
    from scipy.stats import kstest

    assert kstest(z[:200_000].numpy(), "norm").pvalue > 1e-4
    assert z.abs().max() < 5.7  # Box-Muller floor u1 >= 1e-7 bounds |z| by 5.68


def test_counter_words_split_offset():
    c0, c1, c2, c3 = philox_counters(3, 2**32 - 1, (7 << 32) | 9)
    assert c0.tolist() == [2**32 - 1, 0, 1] and c1.tolist() == [0, 1, 1]
    assert c2.tolist() == [9, 9, 9] and c3.tolist() == [7, 7, 7]


def test_dtype_conversion():
    z32 = gaussian_noise((3, 4), 5, 0)
    z16 = gaussian_noise((3, 4), 5, 0, dtype=torch.float16)
    assert z16.dtype == torch.float16 and torch.equal(z16, z32.half())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(shape=(2,), seed=-1, offset=0), "seed"),
        (dict(shape=(2,), seed=2**64, offset=0), "seed"),
        (dict(shape=(2,), seed=1.5, offset=0), "seed"),
        (dict(shape=(2,), seed=0, offset=-3), "offset"),
        (dict(shape=(2,), seed=0, offset=2**63 - 1), "2\\*\\*63"),
        (dict(shape=(2,), seed=0, offset=0, stream=-1), "stream"),
        (dict(shape=(-2,), seed=0, offset=0), "negative"),
        (dict(shape=(2,), seed=0, offset=0, backend="nonsense"), "unknown backend"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_noise(**kwargs)


def test_backend_resolution(monkeypatch):
    resolve_backend.cache_clear()
    try:
        assert resolve_backend("torch", "cpu") == "torch"
        want = "cpp" if unavailable_reason("cpp", "cpu") is None else "torch"
        assert resolve_backend("auto", "cpu") == want
        with pytest.raises(ValueError, match="cuda backend runs on CUDA tensors"):
            resolve_backend("cuda", "cpu")
        monkeypatch.setenv("DIFFSMOOTH_BACKEND", "torch")
        resolve_backend.cache_clear()
        assert resolve_backend("auto", "cpu") == "torch"
        if unavailable_reason("cpp", "cpu") is None:
            assert resolve_backend("cpp", "cpu") == "cpp"  # an explicit request beats the variable
    finally:
        resolve_backend.cache_clear()


def test_opcheck_cpp_op():
    if unavailable_reason("cpp", "cpu"):
        pytest.skip(unavailable_reason("cpp", "cpu"))
    out = torch.empty(2, 3, 5)
    torch.library.opcheck(torch.ops.diffsmooth_fast.gaussian_noise_.default, (out, 3, 7, -5))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    for seed, offset, stream, shape in CASES:
        got = gaussian_noise(shape, seed, offset, stream=stream, backend="cuda", device="cuda").cpu()
        torch.testing.assert_close(got, gaussian_noise_ref(shape, seed, offset, stream=stream), atol=ATOL, rtol=0)
