"""``diffsmooth-fast bench``: the op cases compute what the ops compute, the timing record's fields, CLI errors.
Timings themselves are not asserted (a shared machine makes them noise); benchmarks/ and the GPU run do that."""

from __future__ import annotations

import json

import pytest
import torch

from diffsmooth_fast.bench import ops as cases
from diffsmooth_fast.run import cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("op", ["noisy_input-given", "denoise-fixed", "denoise-given", "vote"])
def test_fused_and_reference_cases_compute_the_same(op):
    """Each timed pairing computes the same thing, so a ratio compares like with like."""
    t = cases.inputs("cpu", batch=4)
    ref, fused = cases.call(op, "ref", t)(), cases.call(op, "cpp", t)()
    if op == "vote":  # both accumulate into their own counts tensor and return it
        assert torch.equal(ref, fused) and int(ref.sum()) == 4
    else:
        torch.testing.assert_close(fused, ref, atol=1e-5, rtol=0)


def test_drawing_cases_use_the_same_noise():
    t = cases.inputs("cpu", batch=3)
    out = cases.call("noisy_input-drawn", "cpp", t)()
    torch.testing.assert_close(cases.call("noisy_input-drawn", "torch+noise", t)(), out, atol=1e-5, rtol=0)


def test_time_op_measures_the_implementations_that_run_here():
    timing = cases.time_op("denoise-fresh", "cpu", batch=2, rounds=2, target_s=0.001)
    assert set(timing.min_s) == {"torch+noise", "cpp"}
    assert "ref" in timing.skipped and timing.baseline == "torch+noise"
    d = timing.as_dict()
    assert d["bytes_written"] == 2 * 5 * 3 * 32 * 32 * 4
    row = d["impls"]["cpp"]
    assert row["median_ms"] > 0 and row["GB/s"] > 0
    assert row["speedup_min"] == pytest.approx(timing.min_s["torch+noise"] / timing.min_s["cpp"])
    assert "speedup_min" not in d["impls"]["torch+noise"]


def test_bench_ops_command_writes_a_record(tmp_path, capsys):
    path = tmp_path / "ops.json"
    assert cli.main(["bench", "ops", "--device", "cpu", "--ops", "vote", "--batch", "8", "--rounds", "2",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "vote" in out and "cpp" in out and "over ref" in out
    record = json.loads(path.read_text())
    assert record["benchmark"] == "ops" and record["device"]["type"] == "cpu"
    assert record["versions"]["torch"] == torch.__version__
    assert record["settings"]["batch"] == 8 and [r["op"] for r in record["ops"]] == ["vote"]
    assert set(record["ops"][0]["impls"]) == {"ref", "cpp"}


@pytest.mark.parametrize("argv,message", [
    (["bench", "ops", "--batch", "0"], "--batch must be >= 1"),
    (["bench", "ops", "--device", "tpu"], "--device must be cpu or cuda"),
    (["bench", "ops", "--ops", "nope"], "invalid choice"),
    (["bench", "ops", "--bogus"], "unrecognized arguments: --bogus"),
    (["bench"], "required"),
    (["bench", "agreement", "--samples", "0"], "--samples must be >= 1"),
])
def test_bench_errors_are_one_line(argv, message, capsys):
    if not torch.cuda.is_available() or "tpu" in argv:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_bench_e2e_hands_its_options_to_the_benchmark(monkeypatch):
    from diffsmooth_fast.bench import end_to_end

    seen = []
    monkeypatch.setattr(end_to_end, "main", lambda argv: seen.append(argv) or {})
    assert cli.main(["bench", "e2e", "--tiny", "--quick", "--device", "cpu"]) == 0
    assert seen == [["--tiny", "--quick", "--device", "cpu"]]


def test_other_commands_still_refuse_unknown_options(capsys):
    assert cli.main(["analyze", "x.tsv", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_agreement_counts_what_differs(monkeypatch):
    """The agreement is computed from the labels: a precision that flips one label in 8 scores 7/8."""
    from diffsmooth_fast.bench import agreement

    def fake(dtype, images, method, samples, seed, device, batch=500):
        labels = torch.zeros(len(images), samples, dtype=torch.int64)
        if dtype == torch.bfloat16:
            labels[0, 0] = 3
        return labels

    monkeypatch.setattr(agreement, "base_labels", fake)
    result = agreement.measure(["float16", "bfloat16"], [0.25], samples=4, max_images=2, seed=0, device="cpu")
    rows = {r["dtype"]: r for r in result["rows"]}
    assert rows["float16"]["sample_agreement"] == 1.0 and rows["float16"]["disagreeing_samples"] == 0
    assert rows["bfloat16"]["sample_agreement"] == 7 / 8 and rows["bfloat16"]["disagreeing_samples"] == 1
    assert rows["bfloat16"]["image_agreement"] == 1.0  # the mode of image 0's labels is still 0


def test_agreement_on_the_demo_models(tmp_path, capsys):
    """A short real run: float32 labels are reproducible, and bfloat16 mostly agrees with them."""
    from diffsmooth_fast.bench import agreement
    from diffsmooth_fast.data import digits
    from diffsmooth_fast.engine.method import MethodConfig

    images = torch.stack([digits.test_set()[i][0] for i in range(2)])
    method = MethodConfig("diffsmooth", sigma=0.25, m=5)
    first = agreement.base_labels(torch.float32, images, method, 6, 0, torch.device("cpu"), batch=4)
    assert torch.equal(first, agreement.base_labels(torch.float32, images, method, 6, 0, torch.device("cpu")))
    path = tmp_path / "agreement.json"
    assert cli.main(["bench", "agreement", "--device", "cpu", "--dtype", "bfloat16", "--sigma", "0.25", "--samples",
                     "6", "--max", "2", "--json", str(path)]) == 0
    row = json.loads(path.read_text())["rows"][0]
    assert row["images"] == 2 and row["samples_per_image"] == 6 and row["sample_agreement"] >= 0.75
    assert "labels agree with float32" in capsys.readouterr().out


def test_group_norm_case_times_the_unfused_chain_and_the_reference():
    timing = cases.time_op("group_norm_silu", "cpu", batch=2, rounds=1, target_s=0.001)
    assert set(timing.min_s) == {"unfused", "ref"} and timing.baseline == "unfused"
    assert {"cpp", "torch+noise"} <= set(timing.skipped)
    t = cases.inputs("cpu", batch=2)
    torch.testing.assert_close(cases.call("group_norm_silu", "ref", t)(), cases.call("group_norm_silu", "unfused", t)(),
                               atol=1e-5, rtol=0)
    assert cases.bytes_moved("group_norm_silu", 2) == (2 * 256 * 16 * 16 * 4,) * 2
