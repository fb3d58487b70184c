"""--batch auto (diffsmooth_fast.engine.batching): the sizing logic against a fake memory model on the CPU, the command
line, and on a GPU a batch whose call fits."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from diffsmooth_fast.engine.batching import DEFAULT_BATCH, CudaMemory, auto_batch, probe_call
from diffsmooth_fast.ops import resolve_backend
from diffsmooth_fast.run.cli import build_parser, main
from diffsmooth_fast.engine.options import EngineOptions, parse_batch
from diffsmooth_fast.smoothing.noise_address import PHASE_PROBE

pytestmark = pytest.mark.usefixtures("one_thread")
GiB, MiB = 2**30, 2**20
LOGGER = "diffsmooth_fast"


class FakeDevice:
    """A device whose call on b samples needs ``fixed + b * per_sample`` bytes (plus ``extra`` above
    ``extra_above`` samples, a workspace the probes cannot see) out of ``free`` bytes."""

    def __init__(self, fixed: int = GiB, per_sample: int = 10 * MiB, free: int = 8 * GiB, extra: int = 0,
                 extra_above: int = 0) -> None:
        self.fixed, self.per_sample, self.free = fixed, per_sample, free
        self.extra, self.extra_above = extra, extra_above
        self.calls: list[int] = []
        self.last = 0

    def need(self, batch: int) -> int:
        return self.fixed + batch * self.per_sample + (self.extra if batch > self.extra_above else 0)

    # the base classifier
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        self.calls.append(batch)
        if self.need(batch) > self.free:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.last = batch
        return torch.zeros(batch, 10)

    # DeviceMemory
    def reset_peak(self) -> None:
        self.last = 0

    def peak_bytes(self) -> int:
        return self.need(self.last)

    def free_bytes(self) -> int:
        return self.free


IMAGE = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))


def pick(fake: FakeDevice, max_batch: int = 100_000, **kwargs) -> int:
    return auto_batch(fake, IMAGE, 0.25, max_batch=max_batch, device="cpu", memory=fake, backend="torch", **kwargs)


def test_largest_batch_within_the_free_memory_rounded_to_8():
    fake = FakeDevice()  # 1 GiB + 10 MiB per sample, 8 GiB free
    expected = math.floor((0.85 * 8 * GiB - GiB) / (10 * MiB))  # 593
    assert pick(fake) == expected - expected % 8 == 592
    assert fake.calls == [4, 16, 592]  # two probes, then one call at the batch chosen


def test_memory_budget_and_fraction():
    assert pick(FakeDevice(), memory_budget=2 * GiB) == 96  # (2 GiB - 1 GiB) / 10 MiB = 102.4
    assert pick(FakeDevice(), fraction=0.5) == 304  # (4 GiB - 1 GiB) / 10 MiB = 307.2


@pytest.mark.parametrize("max_batch,expected", [(100, 100), (10, 10), (3, 3), (1, 1), (601, 592)])
def test_capped_at_max_batch_unrounded(max_batch, expected):
    """No call needs more than an image's n samples; one call for all of them beats a rounded batch needing two."""
    assert pick(FakeDevice(), max_batch) == expected


def test_out_of_memory_in_the_first_probe_halves_down_to_one():
    fake = FakeDevice(free=GiB + 15 * MiB)  # 1 sample fits, 2 do not
    assert pick(fake) == 1
    assert fake.calls == [4, 2, 1]


def test_out_of_memory_in_the_second_probe_keeps_the_largest_that_fits():
    fake = FakeDevice(free=GiB + 100 * MiB)  # 9 samples fit
    assert pick(fake) == 8
    assert fake.calls == [4, 16, 8]


def test_out_of_memory_at_the_chosen_batch_halves():
    fake = FakeDevice(extra=4 * GiB, extra_above=400)  # a workspace the small probes do not show
    assert pick(fake) == 296  # 592 does not fit (1 + 5.8 + 4 GiB > 8 GiB); 296 does
    assert fake.calls == [4, 16, 592, 296]


def test_nothing_fits():
    with pytest.raises(ValueError, match="single noisy sample does not fit"):
        pick(FakeDevice(free=GiB))


def test_no_growth_counts_all_memory_per_sample():
    fake = FakeDevice(fixed=GiB, per_sample=0, free=8 * GiB)  # allocator rounding can hide the slope
    assert pick(fake, memory_budget=4 * GiB) == 64  # 4 GiB / (1 GiB / 16), conservative


def test_other_errors_are_not_taken_for_out_of_memory():
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        auto_batch(broken, IMAGE, 0.25, max_batch=100, device="cpu", memory=FakeDevice(), backend="torch")


def test_base_classifier_gets_probe_positions():
    seen = []

    class WithPositions(FakeDevice):
        accepts_positions = True

        def __call__(self, x, positions=None):
            seen.append(positions)
            return super().__call__(x)

    fake = WithPositions()
    pick(fake, max_batch=50)
    assert [(p.phase, p.first, p.count) for p in seen] == [(PHASE_PROBE, 0, 4), (PHASE_PROBE, 0, 16),
                                                           (PHASE_PROBE, 0, 50)]


def test_cpu_gets_the_default_batch_logged(caplog):
    calls = []
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert auto_batch(calls.append, IMAGE, 0.25, max_batch=5000, device="cpu") == DEFAULT_BATCH == 1000
        assert auto_batch(calls.append, IMAGE, 0.25, max_batch=300, device=torch.device("cpu")) == 300
    assert calls == []  # nothing to measure
    assert any("--batch auto: 1000 on cpu" in r.getMessage() for r in caplog.records if r.name == LOGGER)


@pytest.mark.parametrize("kwargs,match", [({"max_batch": 0}, "max_batch"), ({"memory_budget": 0}, "memory_budget"),
                                          ({"fraction": 1.5}, "fraction"), ({"max_batch": True}, "max_batch")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        auto_batch(FakeDevice(), IMAGE, 0.25, **{"max_batch": 10, "device": "cpu", **kwargs})


# --- the command line -------------------------------------------------------------------------------------------

def test_batch_option_parses_integers_and_auto():
    parse = lambda *extra: build_parser().parse_args(["certify", *extra]).batch  # noqa: E731
    assert parse() == 1000 and parse("--batch", "auto") == "auto" and parse("--batch", "AUTO") == "auto"
    assert parse("--batch", "64") == 64
    assert parse_batch(" 7 ") == 7
    with pytest.raises(ValueError, match="--batch must be an integer >= 1 or auto"):
        parse_batch("1.5")
    with pytest.raises(ValueError, match="--batch"):
        EngineOptions(batch="big")


@pytest.mark.parametrize("value", ["0", "-3", "foo", "1e3", ""])
def test_bad_batch_is_a_one_line_error(value, capsys):
    assert main(["certify", "--dataset", "toy", "--max", "1", "--quiet", "--batch", value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffsmooth-fast: error: argument --batch: must be an integer >= 1 or auto")
    assert "\n" not in err


def test_batch_auto_certifies_and_a_resume_may_change_the_batch(tmp_path, capsys):
    """The batch picked is recorded per session, not in the settings a resume must match: the same run resumed
    with another batch, and an uninterrupted run with a fixed batch, give the same rows."""
    out, ref = tmp_path / "auto.tsv", tmp_path / "fixed.tsv"
    args = ["certify", "--n0", "10", "--n", "60", "--device", "cpu"]
    assert main([*args, "--max", "1", "--batch", "auto", "--out", str(out)]) == 0
    assert "--batch auto: 60 noisy samples per call on cpu" in capsys.readouterr().err
    assert main([*args, "--max", "2", "--batch", "7", "--resume", "--quiet", "--out", str(out)]) == 0
    assert main([*args, "--max", "2", "--batch", "16", "--quiet", "--out", str(ref)]) == 0
    strip = lambda path: [line.rsplit("\t", 1)[0] for line in open(path).read().splitlines()]  # noqa: E731
    assert strip(out) == strip(ref) and len(strip(out)) == 3
    sidecar = json.load(open(f"{out}.json"))
    assert "batch" not in sidecar["settings"]
    assert [(r["options"]["batch"], r["batch"]) for r in sidecar["runs"]] == [("auto", 60), (7, 7)]


# --- on a GPU ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_pipeline():
    from diffsmooth_fast import Denoiser, load_classifier
    from diffsmooth_fast.data import digits
    from diffsmooth_fast.engine.method import MethodConfig, PurifiedClassifier
    from diffsmooth_fast.models import shipped

    den = Denoiser.from_preset("demo", str(shipped.DIFFUSION_CHECKPOINT), device="cuda")
    clf = load_classifier(shipped.classifier_checkpoint(0.25)).cuda()
    base = PurifiedClassifier(MethodConfig("diffsmooth", 0.25, m=5, local_noise="fresh"), clf, den)
    return base, digits.test_set()[0][0].cuda()


@pytest.mark.gpu
def test_auto_batch_on_gpu_fits_its_budget(demo_pipeline):
    base, x = demo_pipeline
    budget = 512 * MiB
    batch = auto_batch(base, x, 0.25, max_batch=10**7, device="cuda", memory_budget=budget)
    assert 8 <= batch < 10**7 and batch % 8 == 0
    memory = CudaMemory(torch.device("cuda"))
    memory.reset_peak()
    probe_call(base, x, 0.25, batch, resolve_backend("auto", "cuda"))  # the call Smooth makes at that batch
    assert memory.peak_bytes() <= 1.1 * budget


@pytest.mark.gpu
def test_auto_batch_on_gpu_free_memory(demo_pipeline):
    base, x = demo_pipeline
    batch = auto_batch(base, x, 0.25, max_batch=20_000, device="cuda")
    assert 1 <= batch <= 20_000
    with torch.no_grad():
        from diffsmooth_fast.smoothing.noise_address import SamplePositions

        scores = base(x.unsqueeze(0).repeat(batch, 1, 1, 1), positions=SamplePositions(0, 0, 1, 0, batch))
    assert scores.shape == (batch, 10)
