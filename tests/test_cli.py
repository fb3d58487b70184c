"""The command line as a user drives it: the built-in toy problem, every method on tiny random-weight models saved
in the real formats, predict, the sidecar, progress, and every user error (one line, exit 2, files untouched)."""

from __future__ import annotations

import argparse
import io as std_io
import json
import os
import sys

import numpy as np
import pytest
import torch

from diffsmooth_fast.data.toy import make_toy
from diffsmooth_fast.run import tsv as io
from diffsmooth_fast.run.cli import main
from diffsmooth_fast.run.progress import Progress

from .tiny_models import save_classifier, save_halfspace, save_npz, save_unet, unet_cli_flags

ERROR = "diffsmooth-fast: error:"
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "unet": save_unet(root / "ema_0.9999_000100.pt"),
        "clf": save_classifier(root / "checkpoint.pth.tar"),
        "nan": save_classifier(root / "nan.pth.tar", nan=True),
        "data": save_npz(root / "images.npz", n=4),
        "labels": np.load(root / "images.npz")["labels"].tolist(),
        "half": save_halfspace(root / "halfspace.pt", root / "halfspace.npz"),
        "half_data": str(root / "halfspace.npz"),
    }


def model_args(files, method: str) -> list[str]:
    args = ["--dataset", "npz", "--data", files["data"], "--classifier", files["clf"], "--normalization", "normalize",
            "--method", method]
    if method in ("diffsmooth", "dds", "multistep"):
        args += ["--denoiser", files["unet"], *unet_cli_flags()]
    return args


SMALL = ["--n0", "8", "--n", "24", "--batch", "16", "--m", "2", "--reverse-steps", "2", "--reverse-runs", "2",
         "--max", "2", "--quiet"]


def strip_time(path) -> list[str]:
    return [line.rsplit("\t", 1)[0] for line in open(path).read().splitlines()]


# --- the toy problem ------------------------------------------------------------------------------------------

def test_certify_toy_writes_cohen_tsv(tmp_path, capsys):
    out = tmp_path / "runs" / "toy.tsv"  # the directory does not exist yet
    rc = main(["certify", "--dataset", "toy", "--n0", "20", "--n", "2000", "--alpha", "0.01", "--skip", "3", "--max", "5",
               "--batch", "512", "--out", str(out)])
    assert rc == 0
    rows = io.read_certify(out)
    assert [r.idx for r in rows] == [0, 3, 6, 9, 12]
    toy = make_toy()
    for row in rows:
        assert row.label == int(toy.labels[row.idx])
        assert row.correct == int(row.predict == row.label)
        assert row.radius <= float(toy.exact_radius[row.idx]) * 1.005 + 1e-3  # 3 digits; alpha=0.01 over 5 rows
    err = capsys.readouterr().err
    assert "[5/5]" in err and "ETA" in err and "certified accuracy" in err and "ACR" in err  # not a TTY: lines


def test_certify_to_stdout_is_deterministic(capsys):
    args = ["certify", "--dataset", "toy", "--n0", "10", "--n", "500", "--max", "3", "--quiet", "--seed", "4"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert main(args + ["--batch", "37"]) == 0  # same seed, other batch size: same rows but for the time
    second = capsys.readouterr().out
    strip = lambda text: [line.rsplit("\t", 1)[0] for line in text.splitlines()]  # noqa: E731
    assert first.out.splitlines()[0] == "\t".join(io.CERTIFY_HEADER)
    assert strip(first.out) == strip(second) and len(strip(first.out)) == 4
    assert "[1/3]" not in first.err  # --quiet


def test_progress_bar_on_a_terminal():
    stream = std_io.StringIO()
    progress = Progress(3, [(0.5, 1)], stream=stream, tty=True)
    progress.update(4, 1, 1, 0.25, 1, 1.5)
    progress.update(8, 1, 0, 0.0, 0, 1.5)
    text = stream.getvalue()
    assert "resuming: 1 of 3" in text and "\r[" in text and "3/3" in text and "ETA" in text
    assert "certified accuracy (r=0) 0.667, ACR 0.250" in text and text.endswith("\n")



def test_progress_of_unlabelled_images_shows_no_accuracy():
    stream = std_io.StringIO()
    progress = Progress(2, [], stream=stream, tty=False)
    progress.update(0, -1, 3, 0.25, 0, 1.0)  # label -1: never correct, so a running accuracy would read 0.000
    text = stream.getvalue()
    assert "no labels: accuracy not defined" in text and "accuracy 0.000" not in text and "ACR" not in text


def test_progress_of_a_sequential_run_shows_the_samples_each_image_drew():
    stream = std_io.StringIO()
    progress = Progress(2, [], stream=stream, tty=False)
    progress.update(0, 1, 1, 0.8, 1, 1.0, 8164)
    progress.update(3, 1, 1, 0.2, 1, 9.0, 100_000)
    first, second = stream.getvalue().splitlines()
    assert "(8,164 samples)" in first and "8,164 samples/image" in first
    assert "(100,000 samples)" in second and "54,082 samples/image" in second
    stream = std_io.StringIO()
    Progress(1, [], stream=stream, tty=False).update(0, 1, 1, 0.8, 1, 1.0)  # a fixed-n run: no samples shown
    assert "samples" not in stream.getvalue()

# --- every method, end to end, on real-format files -------------------------------------------------------------

@pytest.mark.parametrize("method", ["diffsmooth", "dds", "cohen", "local-only", "multistep"])
def test_each_method_certifies_end_to_end(files, tmp_path, method):
    out = tmp_path / f"{method}.tsv"
    assert main(["certify", *model_args(files, method), *SMALL, "--out", str(out)]) == 0
    lines = open(out).read().splitlines()
    assert lines[0] == "\t".join(io.CERTIFY_HEADER)
    rows = io.read_certify(out)
    assert [r.idx for r in rows] == [0, 1] and [r.label for r in rows] == files["labels"][:2]
    for r in rows:
        assert -1 <= r.predict < 10 and r.correct == int(r.predict == r.label) and r.radius >= 0
        assert (r.predict == -1) == (r.radius == 0.0)
    sidecar = json.load(open(f"{out}.json"))
    assert sidecar["settings"]["method"] == method and sidecar["settings"]["seed"] == 0
    assert ("denoiser" in sidecar["settings"]) == (method in ("diffsmooth", "dds", "multistep"))
    run = sidecar["runs"][0]
    assert run["device"] == "cpu" and run["versions"]["torch"] == torch.__version__ and run["num_classes"] == 10
    assert run["options"]["batch"] == 16 and run["argv"][0] == "certify"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # sidecar written atomically


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_runs_end_to_end(files, tmp_path, dtype):
    out = tmp_path / f"{dtype}.tsv"
    assert main(["certify", *model_args(files, "diffsmooth"), *SMALL, "--dtype", dtype, "--out", str(out)]) == 0
    rows = io.read_certify(out)
    assert [r.idx for r in rows] == [0, 1]
    assert json.load(open(f"{out}.json"))["settings"]["dtype"] == dtype


def halfspace_args(files, method: str) -> list[str]:
    """A TorchScript halfspace (predictions move with the noise), optionally behind the tiny diffusion model."""
    args = ["--dataset", "npz", "--data", files["half_data"], "--classifier", files["half"], "--method", method,
            "--sigma", "0.5", "--local-sigma", "0.5", "--n0", "8", "--n", "100", "--batch", "32", "--quiet"]
    return args + (["--denoiser", files["unet"], *unet_cli_flags()] if method == "diffsmooth" else [])


def test_method_settings_reach_the_run(files, tmp_path):
    """Each setting of the pipeline changes the certificates (the halfspace's radii move with any noise change)."""
    variants = {
        "cohen": ["--method", "cohen"],
        "local-only": [],
        "local-only sigma'": ["--local-sigma-shift", "0.3"],
        "local-only fixed": ["--local-noise", "fixed"],
        "local-only m": ["--m", "2"],
    }
    outs = {}
    for name, extra in variants.items():
        out = tmp_path / f"{len(outs)}.tsv"
        assert main(["certify", *halfspace_args(files, "local-only"), "--local-noise", "fresh", *extra,
                     "--out", str(out)]) == 0
        outs[name] = strip_time(out)
    assert len({tuple(rows) for rows in outs.values()}) == len(variants)


def test_fresh_local_noise_is_batch_size_independent(files, tmp_path):
    args = ["certify", *halfspace_args(files, "local-only"), "--local-noise", "fresh", "--m", "3"]
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert main([*args, "--out", str(a), "--batch", "100"]) == 0
    assert main([*args, "--out", str(b), "--batch", "7"]) == 0
    assert strip_time(a) == strip_time(b)
    radii = [r.radius for r in io.read_certify(a)]
    assert len(set(radii)) == len(radii)  # varied certificates: the equality is not trivial


def test_predict_writes_cohen_predict_tsv(files, tmp_path):
    out = tmp_path / "predict.tsv"
    assert main(["predict", *model_args(files, "dds"), "--n", "20", "--batch", "10", "--quiet", "--out", str(out)]) == 0
    assert open(out).readline() == "idx\tlabel\tpredict\tcorrect\ttime\n"
    rows = io.read_predict(out)
    assert [r.idx for r in rows] == [0, 1, 2, 3]
    assert all(r.correct == int(r.predict == r.label) for r in rows)
    assert json.load(open(f"{out}.json"))["settings"]["command"] == "predict"


def test_trust_checkpoint_flag_reaches_the_loader(files, tmp_path):
    path = tmp_path / "with_args.pth.tar"
    checkpoint = torch.load(files["clf"], weights_only=True)
    checkpoint["args"] = argparse.Namespace(lr=0.1)  # unpickling this needs code: refused unless trusted
    torch.save(checkpoint, path)
    args = ["certify", "--dataset", "npz", "--data", files["data"], "--classifier", str(path), "--normalization",
            "normalize", *SMALL]
    assert main([*args, "--out", str(tmp_path / "a.tsv")]) == 2
    assert main([*args, "--out", str(tmp_path / "b.tsv"), "--trust-checkpoint"]) == 0


# --- user errors: one line, exit 2, existing files untouched ---------------------------------------------------

ERRORS = [
    (["--classifier", "missing.pth.tar"], "no such file"),
    (["--classifier", "{unet}"], "no 'arch' entry"),  # a diffusion checkpoint given as the classifier
    (["--denoiser", "{clf}"], "is not a state dict of tensors (OpenAI's model"),  # and the other way round
    (["--sigma", "0"], "sigma must be > 0"),
    (["--sigma", "-0.5"], "sigma must be > 0"),
    (["--local-sigma", "-0.1"], "local sigma must be >= 0"),
    (["--m", "0"], "m must be an integer >= 1"),
    (["--n0", "100", "--n", "50"], "below --n0"),
    (["--method", "denoise"], "invalid choice: 'denoise'"),
    (["--classifier", "{nan}"], "NaN"),
    (["--dataset", "demo"], "built in and take no --data"),
    (["--demo-classifier", "0.25"], "use it with --dataset demo"),
    (["--dataset", "cifar10", "--data", "nowhere"], "no such file or directory"),
    (["--alpha", "1.5"], "--alpha"),
    (["--batch", "0"], "--batch"),
    (["--batch", "foo"], "--batch"),
    (["--skip", "0"], "--skip"),
    (["--backend", "warp"], "unknown backend"),
    (["--resume"], "exclude each other"),
    (["--reverse-steps", "500", "--method", "multistep"], "reverse steps must be at most"),
    (["--image_size", "64"], "does not fit the flags"),
    (["--num_channel", "32"], "unrecognized arguments: --num_channel"),
]


@pytest.mark.parametrize("extra,match", ERRORS)
def test_user_errors_are_one_line_and_touch_nothing(files, tmp_path, capsys, extra, match):
    out = tmp_path / "precious.tsv"
    out.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n")
    sidecar = tmp_path / "precious.tsv.json"
    sidecar.write_text('{"settings": {}}\n')
    before = (out.read_bytes(), sidecar.read_bytes(), sorted(os.listdir(tmp_path)))
    extra = [e.format(**files) for e in extra]
    args = [*model_args(files, "diffsmooth"), *SMALL, *extra, "--out", str(out), "--overwrite"]
    capsys.readouterr()
    assert main(["certify", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(ERROR) or err.startswith("diffsmooth-fast certify: error:")
    assert "\n" not in err and match in err, err
    assert (out.read_bytes(), sidecar.read_bytes(), sorted(os.listdir(tmp_path))) == before


def test_output_directory_not_writable(files, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["certify", "--dataset", "toy", *SMALL, "--out", str(blocker / "sub" / "out.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a directory" in err and "\n" not in err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["certify", "--dataset", "toy", *SMALL, "--out", str(locked / "out.tsv")]) == 2
        assert "not writable" in capsys.readouterr().err


def test_a_missing_dataset_or_classifier_is_named(files, capsys):
    assert main(["certify", "--data", files["data"], *SMALL]) == 2
    assert "--dataset is required" in capsys.readouterr().err
    assert main(["certify", "--dataset", "npz", "--data", files["data"], *SMALL]) == 2
    assert "--classifier is required" in capsys.readouterr().err
    assert main(["certify", "--dataset", "toy", "--method", "dds", *SMALL]) == 2
    assert "toy problem has no diffusion model" in capsys.readouterr().err


def test_an_error_line_is_written_in_one_piece(monkeypatch):
    """The processes of a torchrun run share one stderr: a line written in two pieces (print writes the text and
    the newline apart) can interleave with another process's into one garbled line."""
    from diffsmooth_fast.run import errors

    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    assert main(["certify", "--n", "0"]) == 2
    assert len(writes) == 1 and writes[0].startswith("diffsmooth-fast: error: ") and writes[0].endswith("\n")
    assert writes[0].count("\n") == 1
    assert errors.report(FileNotFoundError(2, "No such file or directory", "x.pt")) == 2
    assert writes[1] == "diffsmooth-fast: error: x.pt: No such file or directory\n"
