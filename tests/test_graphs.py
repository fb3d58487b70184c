"""CUDA graphs per batch shape (diffsmooth_fast.engine.graphs): the caching logic with a fake graph backend on the CPU,
the engine's networks through graphs (EngineOptions(cuda_graphs=True)) and --cuda-graphs, and on a GPU graphed
against eager outputs, counts and certificates."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from diffsmooth_fast import Denoiser, Smooth, load_classifier
from diffsmooth_fast.data import digits
from diffsmooth_fast.engine.counting import CountingPath
from diffsmooth_fast.engine.graphs import GraphedFunction, GraphPool
from diffsmooth_fast.engine.method import MethodConfig, PurifiedClassifier
from diffsmooth_fast.engine.options import EngineOptions, assemble
from diffsmooth_fast.models import shipped
from diffsmooth_fast.run.build import build_job
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.run.configs import DataConfig, ModelConfig, SamplingConfig, resolve
from diffsmooth_fast.smoothing.noise_address import SamplePositions

pytestmark = pytest.mark.usefixtures("one_thread")
LOGGER = "diffsmooth_fast"


class FakeGraph:
    def __init__(self, replay) -> None:
        self._replay = replay
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        self._replay()


class FakeBackend:
    """Graphs on the CPU: 'capture' runs fn once to make the static output, 'replay' recomputes it in place from
    the static input, as a real replay rewrites its static output from its static input."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.pools: list[GraphPool] = []
        self.graphs: list[FakeGraph] = []

    def supports(self, x: torch.Tensor) -> bool:
        return True

    def capture(self, fn, static_input, pool):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        self.pools.append(pool)
        static_output = fn(static_input)
        graph = FakeGraph(lambda: static_output.copy_(fn(static_input)))
        self.graphs.append(graph)
        return graph, static_output


def affine(x: torch.Tensor) -> torch.Tensor:
    return (2 * x + 1).sum(dim=1)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --- the wrapper's logic, on the CPU with a fake backend --------------------------------------------------------

def test_one_graph_per_shape_replayed_for_later_calls():
    backend = FakeBackend()
    graphed = GraphedFunction(affine, backend=backend)
    for seed, b in enumerate([8, 8, 3, 8, 3, 5]):  # full batches, smaller last batches
        x = rand(b, 4, seed=seed)
        torch.testing.assert_close(graphed(x), affine(x), rtol=0, atol=0)
    assert graphed.captures == 3 and sorted(graphed.shapes) == [(3, 4), (5, 4), (8, 4)]
    assert [g.replays for g in backend.graphs] == [3, 2, 1]  # the first call replays too: capture runs nothing


def test_outputs_are_the_callers_and_inputs_are_copied():
    graphed = GraphedFunction(affine, backend=FakeBackend())
    x1, x2 = rand(6, 4, seed=1), rand(6, 4, seed=2)
    y1 = graphed(x1)
    kept = y1.clone()
    x1.fill_(7.0)  # the caller's tensor may change after the call: the graph copied it in
    y2 = graphed(x2)
    torch.testing.assert_close(y1, kept, rtol=0, atol=0)  # not overwritten by the second replay (a clone)
    torch.testing.assert_close(y2, affine(x2), rtol=0, atol=0)


def test_dtype_and_layout_get_their_own_graphs():
    graphed = GraphedFunction(lambda x: x * 3, backend=FakeBackend())
    x = rand(2, 3, 4, 4)
    graphed(x)
    graphed(x.double())
    graphed(x.to(memory_format=torch.channels_last))
    assert graphed.captures == 3


def test_least_recently_used_shape_is_dropped():
    graphed = GraphedFunction(affine, backend=FakeBackend(), max_shapes=2)
    for b in (4, 2, 4, 3):  # 2 is the least recently used when 3 arrives
        graphed(rand(b, 4))
    assert graphed.shapes == [(4, 4), (3, 4)] and graphed.captures == 3
    torch.testing.assert_close(graphed(rand(2, 4, seed=5)), affine(rand(2, 4, seed=5)))
    assert graphed.captures == 4 and graphed.shapes == [(3, 4), (2, 4)]


def test_graphs_of_a_pipeline_share_one_pool():
    backend = FakeBackend()
    pool = GraphPool()
    a = GraphedFunction(affine, backend=backend, pool=pool)
    b = GraphedFunction(lambda x: x - 1, backend=backend, pool=pool)
    a(rand(2, 4))
    b(rand(3, 4))
    assert backend.pools == [pool, pool]


def test_a_failed_capture_runs_eagerly_and_says_so(caplog):
    graphed = GraphedFunction(affine, name="classifier", backend=FakeBackend(fail=True))
    x = rand(4, 4)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        torch.testing.assert_close(graphed(x), affine(x), rtol=0, atol=0)
        torch.testing.assert_close(graphed(x), affine(x), rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and "capturing the classifier failed" in warnings[0] and "\n" not in warnings[0]
    assert graphed.failed and graphed.captures == 0


def test_cpu_tensors_pass_through_with_a_note(caplog):
    calls = []
    graphed = GraphedFunction(lambda x: calls.append(x) or x + 1, name="denoiser")  # the real (CUDA) backend
    x = rand(3, 4)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        y1, y2 = graphed(x), graphed(x)
    assert calls == [x, x] and torch.equal(y1, x + 1) and torch.equal(y2, x + 1) and graphed.captures == 0
    notes = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert notes == ["CUDA graphs apply to CUDA tensors only: the denoiser runs eagerly on cpu"]


def test_rejects_bad_max_shapes():
    with pytest.raises(ValueError, match="max_shapes"):
        GraphedFunction(affine, max_shapes=0)


# --- the engine's networks and the command line ----------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_models():
    den = Denoiser.from_preset("demo", str(shipped.DIFFUSION_CHECKPOINT))
    clf = load_classifier(shipped.classifier_checkpoint(0.25))
    x, _ = digits.test_set()[0]
    return den, clf, x


def noisy_batch(x: torch.Tensor, b: int, seed: int, device: str = "cpu") -> torch.Tensor:
    noise = torch.randn((b, *x.shape), generator=torch.Generator().manual_seed(seed))
    return (x.unsqueeze(0) + 0.5 * noise).to(device)


PIPELINES = [("diffsmooth", "fresh", False), ("diffsmooth", "fresh", True), ("diffsmooth", "fixed", False),
             ("dds", "fixed", True), ("cohen", "fixed", False), ("multistep", "fixed", False)]
CALLS = ("denoise", "model_output", "classify", "classify_normalized")


def pipeline(demo_models, method, local_noise, fused, device="cpu", fake_graphs=False,
             **options) -> PurifiedClassifier | CountingPath:
    """The method's base classifier as a run assembles it; ``fake_graphs``: through graphs of the fake backend."""
    den, clf, _ = demo_models
    config = MethodConfig(method, 0.5, local_sigma=0.25, m=3, local_noise=local_noise, reverse_steps=2,
                          reverse_runs=2)
    den = copy.deepcopy(den).to(device) if config.uses_denoiser else None  # the fixture's models stay on the CPU
    base = assemble(config, copy.deepcopy(clf).to(device), den, EngineOptions(fused=fused, device=device, **options),
                    seed=7)
    base.networks.start()
    if fake_graphs:
        for name in CALLS:
            base.networks.graphed(name).backend = FakeBackend()
        base.networks.graphs_on = True
    return base


def captures(base) -> dict[str, int]:
    return {name: base.networks.graphed(name).captures for name in CALLS}


@pytest.mark.parametrize("method,local_noise,fused", PIPELINES)
def test_pipeline_through_fake_graphs_gives_the_eager_scores(demo_models, method, local_noise, fused):
    """The pipeline routes its networks through the graphed functions, batch shape by batch shape, while its own
    noise (drawn at positions that change every batch) stays outside them."""
    eager = pipeline(demo_models, method, local_noise, fused)
    graphed = pipeline(demo_models, method, local_noise, fused, fake_graphs=True)
    x = demo_models[2]
    first = 0
    for b in (6, 6, 4):
        batch, positions = noisy_batch(x, b, first), SamplePositions(7, 3, 1, first, b)
        torch.testing.assert_close(graphed(batch, positions=positions), eager(batch, positions=positions),
                                   rtol=0, atol=0)
        first += b
    uses_unet = method in ("diffsmooth", "dds")
    assert captures(graphed) == {"denoise": 2 if uses_unet else 0, "model_output": 0, "classify": 2,
                                 "classify_normalized": 0}


@pytest.mark.parametrize("method,local_noise", [("diffsmooth", "fresh"), ("dds", "fixed"), ("cohen", "fixed")])
def test_counting_path_through_fake_graphs_gives_the_eager_counts(demo_models, method, local_noise):
    eager = pipeline(demo_models, method, local_noise, True)
    graphed = pipeline(demo_models, method, local_noise, True, fake_graphs=True)
    x = demo_models[2]
    want = Smooth(eager, 10, seed=7).sample_counts(x, 30, 12, idx=3)
    assert torch.equal(Smooth(graphed, 10, seed=7).sample_counts(x, 30, 12, idx=3), want)
    folds = method != "cohen"
    assert captures(graphed) == {"denoise": 0, "model_output": 2 if folds else 0, "classify": 0 if folds else 2,
                                 "classify_normalized": 2 if folds else 0}  # batches of 12 and of 6


def test_cuda_graphs_on_cpu_is_the_eager_pipeline(demo_models, caplog):
    eager = pipeline(demo_models, "diffsmooth", "fresh", False)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        graphed = pipeline(demo_models, "diffsmooth", "fresh", False, cuda_graphs=True)
    batch, positions = noisy_batch(demo_models[2], 5, 0), SamplePositions(7, 3, 1, 0, 5)
    assert not graphed.networks.graphs_on  # start() switches graphs on only on CUDA
    assert torch.equal(graphed(batch, positions=positions), eager(batch, positions=positions))
    assert sum(captures(graphed).values()) == 0
    assert any("--cuda-graphs: ignored on cpu" in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_cuda_graphs_option_is_ignored_on_cpu_with_a_note(tmp_path, caplog):
    args = ["certify", "--max", "1", "--n0", "10", "--n", "40", "--batch", "16", "--quiet", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "eager.tsv")]) == 0
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert main([*args, "--cuda-graphs", "--out", str(tmp_path / "graphs.tsv")]) == 0
    assert any("--cuda-graphs: ignored on cpu" in r.getMessage() for r in caplog.records if r.name == LOGGER)
    strip = lambda path: [line.rsplit("\t", 1)[0] for line in open(path).read().splitlines()]  # noqa: E731
    assert strip(tmp_path / "graphs.tsv") == strip(tmp_path / "eager.tsv")


# --- on a GPU: real graphs against eager ------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("method,local_noise,fused", PIPELINES)
def test_graphed_pipeline_matches_eager_on_gpu(demo_models, method, local_noise, fused):
    eager = pipeline(demo_models, method, local_noise, fused, device="cuda")
    graphed = pipeline(demo_models, method, local_noise, fused, device="cuda", cuda_graphs=True)
    assert graphed.networks.graphs_on
    x = demo_models[2]
    first = 0
    for b in (32, 32, 7, 32, 7, 2):  # full batches, a smaller last batch, the probe's 2
        batch, positions = noisy_batch(x, b, first, "cuda"), SamplePositions(7, 3, 1, first, b)
        with torch.no_grad():
            want = eager(batch, positions=positions)
            got = graphed(batch, positions=positions)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        first += b
    assert captures(graphed)["classify"] == 3 and not graphed.networks.graphed("classify").failed
    if method in ("diffsmooth", "dds"):
        assert captures(graphed)["denoise"] == 3 and not graphed.networks.graphed("denoise").failed
    if fused:
        x = x.cuda()
        want = Smooth(eager, 10, seed=7).sample_counts(x, 100, 32, idx=3)
        assert torch.equal(Smooth(graphed, 10, seed=7).sample_counts(x, 100, 32, idx=3), want)


@pytest.mark.gpu
def test_graphed_function_on_gpu_replays_and_evicts():
    weight = torch.randn(16, 16, device="cuda")
    graphed = GraphedFunction(lambda x: torch.relu(x @ weight), max_shapes=2)
    for b in (8, 8, 3, 8, 5):
        x = torch.randn(b, 16, device="cuda")
        torch.testing.assert_close(graphed(x), torch.relu(x @ weight), rtol=0, atol=0)
    assert graphed.captures == 3 and graphed.shapes == [(8, 16), (5, 16)]


@pytest.mark.gpu
@pytest.mark.parametrize("method,local_noise,fused", [("diffsmooth", "fresh", False), ("diffsmooth", "fixed", True),
                                                      ("dds", "fixed", False)])
def test_certificates_with_and_without_graphs_on_gpu(method, local_noise, fused):
    data = DataConfig("demo", skip=40, max=4)
    method_config = MethodConfig(method, 0.25, m=3, local_noise=local_noise)
    results = {}
    for graphs in (False, True):
        engine = EngineOptions(batch=64, device="cuda", fused=fused, cuda_graphs=graphs)
        job = build_job(resolve("certify", data, ModelConfig(), method_config, SamplingConfig(n0=20, n=200), engine))
        assert job.smooth.base_classifier.networks.graphs_on == graphs
        results[graphs] = [job.smooth.certify(job.images[i][0].cuda(), 20, 200, 0.001, job.batch, idx=i)
                           for i in job.indices]
    assert results[True] == results[False]
