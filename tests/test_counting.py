"""The fused counting path (diffsmooth_fast.engine.counting) against the plain path, on the shipped demo models.

The plain path is the reference: Smooth draws the noisy copies, the method's pipeline scores them, Smooth counts the
argmax. The counting path draws the same noise itself (noisy_input, at the same positions), runs the UNet,
denoise_replicate, the classifier network and vote. In float32 both must count the same votes and write the same
certificates, for every method; and a ``--fused`` run must really dispatch the fused ops.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffsmooth_fast import Denoiser, Smooth, load_classifier
from diffsmooth_fast.data import digits
from diffsmooth_fast.engine.counting import CountingPath
from diffsmooth_fast.engine.method import MethodConfig
from diffsmooth_fast.engine.options import EngineOptions, assemble
from diffsmooth_fast.models import shipped
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.smoothing.noise_address import PHASE_ESTIMATION, PHASE_SELECTION

pytestmark = pytest.mark.usefixtures("one_thread")

# Every method, and each local-noise mode of DiffSmooth; multistep with 2 steps and 2 runs to stay fast.
METHODS = [("diffsmooth", "fixed"), ("diffsmooth", "fresh"), ("diffsmooth", "reference"), ("dds", "fixed"),
           ("cohen", "fixed"), ("local-only", "fixed"), ("local-only", "fresh"), ("multistep", "fixed")]


@pytest.fixture(scope="module")
def demo():
    den = Denoiser.from_preset("demo", str(shipped.DIFFUSION_CHECKPOINT))
    classifiers = {noise: load_classifier(shipped.classifier_checkpoint(noise)) for noise in shipped.CLASSIFIER_NOISES}
    return den, classifiers, digits.test_set()


def base_classifier(demo, method: str, local_noise: str, fused: bool, backend: str = "auto", sigma: float = 0.5):
    den, classifiers, _ = demo
    config = MethodConfig(method, sigma, local_sigma=0.25, local_sigma_shift=0.03, m=3, local_noise=local_noise,
                          reverse_steps=2, reverse_runs=2)
    clf = classifiers[shipped.classifier_noise_for(config)]
    return assemble(config, clf, den if config.uses_denoiser else None, EngineOptions(fused=fused, backend=backend),
                    seed=7)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("method,local_noise", METHODS)
def test_counting_path_counts_the_plain_paths_votes(demo, method, local_noise, backend):
    plain = base_classifier(demo, method, local_noise, False, backend)
    fused = base_classifier(demo, method, local_noise, True, backend)
    assert isinstance(fused, CountingPath) and not isinstance(plain, CountingPath)
    assert fused.folds == (method in ("diffsmooth", "dds"))
    images = demo[2]
    for idx in (0, 41, 77):
        x = images[idx][0]
        for phase, num, batch in ((PHASE_SELECTION, 23, 10), (PHASE_ESTIMATION, 50, 16)):
            want = Smooth(plain, 10, seed=7, backend=backend).sample_counts(x, num, batch, idx=idx, phase=phase)
            got = Smooth(fused, 10, seed=7, backend=backend).sample_counts(x, num, batch, idx=idx, phase=phase)
            assert torch.equal(got, want), (idx, phase, got.tolist(), want.tolist())
            assert int(got.sum()) == num


def _inputs_seen(module: torch.nn.Module, run) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hook = module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        run()
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("method", ["diffsmooth", "cohen"])
def test_counting_path_draws_the_plain_paths_noise(demo, method):
    """The positions are the contract: the UNet (diffsmooth) or the classifier (cohen) sees bit for bit the inputs
    of the plain path, batch after batch."""
    x = demo[2][5][0]
    seen = {}
    for fused in (False, True):
        base = base_classifier(demo, method, "fresh", fused)
        module = base.networks.denoiser.unet if method == "diffsmooth" else base.networks.classifier
        smooth = Smooth(base, 10, seed=7)
        seen[fused] = _inputs_seen(module, lambda: smooth.sample_counts(x, 30, 12, idx=5, start=17))
    assert len(seen[True]) == len(seen[False]) == 3
    for got, want in zip(seen[True], seen[False]):
        assert torch.equal(got, want)


def test_counting_path_flags_non_finite_outputs(demo):
    fused = base_classifier(demo, "diffsmooth", "fixed", True)
    x = demo[2][0][0].clone()
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        Smooth(fused, 10, seed=7).certify(x, 10, 20, 0.001, 8, idx=0)


class _FusedOps(TorchDispatchMode):
    """Counts the project's ops (torch.ops.diffsmooth_fast.*) dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith("diffsmooth_fast::"):
            self.calls[name.split("::")[1].split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def test_fused_certify_run_dispatches_the_fused_ops(tmp_path):
    args = ["certify", "--max", "2", "--n0", "20", "--n", "60", "--batch", "32", "--quiet", "--backend", "cpp"]
    with _FusedOps() as plain:
        assert main([*args, "--out", str(tmp_path / "plain.tsv")]) == 0
    with _FusedOps() as fused:
        assert main([*args, "--fused", "--out", str(tmp_path / "fused.tsv")]) == 0
    # 2 images x (1 selection + 2 estimation batches) = 6 counting calls
    assert fused.calls["noisy_input_"] == 6 and fused.calls["denoise_replicate_"] == 6 and fused.calls["vote_"] == 6
    assert plain.calls["noisy_input_"] == plain.calls["denoise_replicate_"] == plain.calls["vote_"] == 0
    rows = lambda path: [line.split("\t")[:5] for line in open(path).read().splitlines()]  # noqa: E731
    assert rows(tmp_path / "fused.tsv") == rows(tmp_path / "plain.tsv")


@pytest.mark.parametrize("method,local_noise", METHODS)
def test_fused_flag_writes_the_plain_paths_rows(tmp_path, method, local_noise):
    """predict, radius and correct, TSV row by TSV row, on the demo, for every method."""
    args = ["certify", "--method", method, "--local-noise", local_noise, "--reverse-steps", "2", "--reverse-runs", "2",
            "--skip", "37", "--max", "4", "--n0", "20", "--n", "100", "--batch", "40", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "plain.tsv")]) == 0
    assert main([*args, "--fused", "--out", str(tmp_path / "fused.tsv")]) == 0
    rows = lambda path: [line.split("\t")[:5] for line in open(path).read().splitlines()]  # noqa: E731
    assert rows(tmp_path / "fused.tsv") == rows(tmp_path / "plain.tsv")
    assert len(rows(tmp_path / "plain.tsv")) == 5
