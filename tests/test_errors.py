"""Faults a user meets, each as one line on stderr with exit status 2 and nothing lost: outputs that are not
regular files, a full disk, running out of memory, a .npy given as an .npz; and what people coming from Cohen et
al.'s scripts type: --N, --N0, positional arguments, --help's defaults, the summary at the end, analyze's plot."""

from __future__ import annotations

import errno
import json
import os
import stat

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from diffsmooth_fast.engine.method import MethodConfig
from diffsmooth_fast.engine.options import EngineOptions
from diffsmooth_fast.run import summary
from diffsmooth_fast.run import tsv as io
from diffsmooth_fast.run.cli import build_parser, main
from diffsmooth_fast.run.configs import (DataConfig, ModelConfig, OutputConfig, SamplingConfig, check_regular_file,
                                         resolve)
from diffsmooth_fast.smoothing.certify import Smooth

from .tiny_models import save_classifier, save_npz

ERROR = "diffsmooth-fast: error:"
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]
TOY = ["certify", "--dataset", "toy", "--n0", "10", "--n", "200", "--batch", "100", "--quiet"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(ERROR) and "\n" not in err, err
    return err


# --- the output must be a regular file --------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_a_device_is_not_an_output_even_with_overwrite(device, tmp_path, capsys):
    """Through a link in the test's folder: code that wrongly replaces the output replaces the link, never the
    machine's device (a test run as root against such code must not turn /dev/null into a regular file)."""
    if not os.path.exists(device) or not stat.S_ISCHR(os.stat(device).st_mode):
        pytest.skip(f"{device} is not a character device here")
    with pytest.raises(ValueError, match="character device, not a regular file"):
        check_regular_file(device)  # the check itself, on the device as named
    link = tmp_path / "out.tsv"
    link.symlink_to(device)
    assert main([*TOY, "--max", "1", "--out", str(link), "--overwrite"]) == 2
    assert "character device, not a regular file" in one_error_line(capsys)
    assert link.is_symlink() and sorted(os.listdir(tmp_path)) == ["out.tsv"]


def test_a_fifo_is_not_an_output(tmp_path, capsys):
    fifo = tmp_path / "rows"
    os.mkfifo(fifo)
    assert main([*TOY, "--max", "1", "--out", str(fifo), "--overwrite"]) == 2  # would block on open otherwise
    assert "is a fifo" in one_error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["rows"]


def test_an_empty_output_path_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TOY, "--max", "1", "--out", ""]) == 2
    assert "--out is empty" in one_error_line(capsys)
    assert os.listdir(tmp_path) == []  # no stray .PID.tmp
    with pytest.raises(ValueError, match="empty"):
        OutputConfig(" ")


# --- a full disk ------------------------------------------------------------------------------------------------

def test_a_full_disk_while_writing_rows_names_the_file_and_keeps_the_rows(tmp_path, capsys, monkeypatch):
    out = tmp_path / "toy.tsv"
    real = io.write_line
    calls = []

    def fills_up(stream, line, *, sync=True):
        calls.append(line)
        if len(calls) == 3:
            stream.write(line[:5])  # part of the row reached the disk, then the disk was full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(stream, line, sync=sync)

    monkeypatch.setattr(io, "write_line", fills_up)
    assert main([*TOY, "--max", "5", "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert f"{out}: No space left on device" in err and "--resume" in err
    assert sorted(os.listdir(tmp_path)) == ["toy.tsv", "toy.tsv.json"]  # no temporary file
    assert [r.idx for r in io.read_certify(out, torn_tail=True)] == [0, 1]
    monkeypatch.setattr(io, "write_line", real)
    assert main([*TOY, "--max", "5", "--out", str(out), "--resume"]) == 0  # room again: nothing was lost
    assert [r.idx for r in io.read_certify(out)] == [0, 1, 2, 3, 4]


def test_a_full_disk_while_writing_the_sidecar_names_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "toy.tsv"
    real = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".json." + str(os.getpid()) + ".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to tell the files apart")
    monkeypatch.setattr(os, "fsync", full)
    assert main([*TOY, "--max", "2", "--out", str(out)]) == 2
    assert f"{out}.json: No space left on device" in one_error_line(capsys)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


# --- out of memory ----------------------------------------------------------------------------------------------

OOM = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
       RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                    "tried to allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)"),
       MemoryError()]


@pytest.mark.parametrize("error", OOM, ids=["cuda", "cpu", "python"])
def test_out_of_memory_on_an_image_says_which_batch_to_try(tmp_path, capsys, monkeypatch, error):
    out = tmp_path / "toy.tsv"
    real, calls = Smooth.certify, []

    def certify(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Smooth, "certify", certify)
    assert main([*TOY, "--max", "3", "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert "out of memory on cpu at --batch 100 on image 1" in err and "--resume --batch 50" in err
    assert [r.idx for r in io.read_certify(out)] == [0]  # the finished row is kept


def test_out_of_memory_while_loading_is_one_line(tmp_path, capsys, monkeypatch):
    from diffsmooth_fast.run import runner

    def build(settings):
        raise MemoryError()

    monkeypatch.setattr(runner, "build_job", build)
    assert main([*TOY, "--max", "1", "--out", str(tmp_path / "a.tsv")]) == 2
    assert "out of memory at --batch 100: try --batch 50" in one_error_line(capsys)


def test_a_real_error_is_still_a_traceback(tmp_path, monkeypatch):
    """Only running out of memory becomes a user error: a bug keeps its traceback."""
    def bug(self, *args, **kwargs):
        raise RuntimeError("index out of range in self")

    monkeypatch.setattr(Smooth, "certify", bug)
    with pytest.raises(RuntimeError, match="index out of range"):
        main([*TOY, "--max", "1", "--out", str(tmp_path / "a.tsv")])


# --- data -------------------------------------------------------------------------------------------------------

def test_a_npy_given_as_npz_says_what_npz_is_expected(tmp_path, capsys):
    clf = save_classifier(tmp_path / "checkpoint.pth.tar")
    save_npz(tmp_path / "images.npz", n=2)
    npy = tmp_path / "images.npy"
    np.save(npy, np.load(tmp_path / "images.npz")["images"])
    assert main(["certify", "--dataset", "npz", "--data", str(npy), "--classifier", clf, "--normalization",
                 "normalize", "--n0", "4", "--n", "8", "--batch", "8", "--out", str(tmp_path / "a.tsv")]) == 2
    err = one_error_line(capsys)
    assert "a .npy file" in err and "numpy.savez(path, images=..., labels=...)" in err
    assert not os.path.exists(tmp_path / "a.tsv")


# --- Cohen et al.'s spellings -----------------------------------------------------------------------------------

def test_cohens_N_and_N0_are_accepted(tmp_path):
    out = tmp_path / "toy.tsv"
    assert main(["certify", "--dataset", "toy", "--N0", "12", "--N", "150", "--batch", "100", "--skip", "5",
                 "--max", "2", "--alpha", "0.01", "--split", "test", "--quiet", "--out", str(out)]) == 0
    settings = json.load(open(f"{out}.json"))["settings"]
    assert (settings["n0"], settings["n"], settings["alpha"], settings["skip"]) == (12, 150, 0.01, 5)
    predicted = tmp_path / "predict.tsv"
    assert main(["predict", "--dataset", "toy", "--N", "50", "--max", "1", "--quiet", "--out", str(predicted)]) == 0
    assert json.load(open(f"{predicted}.json"))["settings"]["n"] == 50


def test_cohens_positional_arguments_get_the_options_to_use(capsys):
    assert main(["certify", "cifar10", "model.pth.tar", "0.25", "out.tsv", "--N", "100"]) == 2
    err = one_error_line(capsys)
    assert "--dataset DATASET" in err and "--classifier BASE_CLASSIFIER" in err and "--out OUTFILE" in err


NO_DEFAULT = {"--data", "--denoiser", "--classifier", "--plot"}  # nothing is used unless given


@pytest.mark.parametrize("command", ["certify", "predict", "analyze"])
def test_help_shows_every_default(command):
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.choices).choices[command]
    blocks, block = {}, None  # the help of each option: its first line and the indented lines after it
    for line in sub.format_help().splitlines():
        if line.startswith("  -"):
            block = line.split()[0].rstrip(",")
            blocks[block] = line
        elif block is not None and line.startswith(" " * 6):
            blocks[block] += " " + line
        else:
            block = None
    checked = 0
    for action in sub._actions:
        if not action.option_strings or action.help == "==SUPPRESS==" or action.option_strings[0] == "-h":
            continue
        text = " ".join(blocks[action.option_strings[0]].split())
        if action.default is None:
            assert action.option_strings[0] in NO_DEFAULT or "default" in text, text  # said in words
        elif action.default is not False:  # flags are off unless given
            assert f"(default: {action.default})" in text, text
            checked += 1
    assert checked >= (10 if command != "analyze" else 1)


# --- the summary ------------------------------------------------------------------------------------------------

def toy_settings(n: int = 1000, sigma: float = 0.25, alpha: float = 0.001, out: str = "-", command: str = "certify"):
    return resolve(command, DataConfig("toy"), ModelConfig(), MethodConfig("cohen", sigma),
                   SamplingConfig(10, n, alpha), EngineOptions(), OutputConfig(out))


@pytest.mark.parametrize("n,sigma,alpha", [(1000, 0.25, 0.001), (100_000, 0.25, 0.001), (500, 0.5, 0.01)])
def test_radius_cap_is_the_bound_of_a_unanimous_vote(n, sigma, alpha):
    expected = sigma * norm.ppf(alpha ** (1 / n))  # the Clopper-Pearson bound with all n votes is alpha^(1/n)
    assert beta.ppf(alpha, n, 1) == pytest.approx(alpha ** (1 / n))
    assert summary.radius_cap(toy_settings(n, sigma, alpha)) == pytest.approx(expected, rel=1e-9)
    assert round(summary.radius_cap(toy_settings()), 3) == 0.616  # the demo's n, sigma and alpha


def test_radius_cap_of_a_sequential_run_is_at_the_level_of_its_last_look():
    from diffsmooth_fast.smoothing.sequential import schedule

    fixed = toy_settings(n=1000)
    sequential = resolve("certify", DataConfig("toy"), ModelConfig(), MethodConfig("cohen", 0.25),
                         SamplingConfig(10, 1000, 0.001, sequential=True, radii=(0.0, 0.25)), EngineOptions())
    last = schedule(1000, 0.001, 0.25, (0.0, 0.25)).levels[-1]
    assert 0 < last < 0.001
    assert summary.radius_cap(sequential) == pytest.approx(0.25 * norm.ppf(last ** (1 / 1000)))
    assert summary.radius_cap(sequential) < summary.radius_cap(fixed)
    rows = [io.CertifyRow(0, 1, 1, 0.5, 1, 1.0, 1000), io.CertifyRow(1, 1, 1, 0.5, 1, 1.0, 250)]
    said = summary.lines(sequential, rows)
    assert said[2] == ("estimation samples per image: mean 625, median 625 of n = 1,000 (1.6x fewer than a fixed-n "
                       "run on average); 1 of 2 images used all n")
    assert "last look's share of alpha" in said[3]
    assert not any("samples per image" in line for line in summary.lines(fixed, [io.CertifyRow(0, 1, 1, 0.5, 1, 1.0)]))


def test_summary_counts_images_and_abstentions_and_says_where_the_rows_are(tmp_path, capsys):
    out = tmp_path / "toy.tsv"
    assert main(["certify", "--dataset", "toy", "--n0", "10", "--n", "1000", "--batch", "500", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    rows = io.read_certify(out)
    abstained = sum(r.predict == -1 for r in rows)
    assert f"{len(rows)} images, {abstained} abstained; rows in {out} (settings in {out}.json)" in err
    assert "n = 1000 caps every radius at sigma * Phi^-1(alpha^(1/n)) = 0.616" in err
    assert max(r.radius for r in rows) <= 0.616


def test_summary_of_unlabelled_rows_does_not_claim_accuracy():
    rows = [io.CertifyRow(0, -1, -1, 0.0, 0, 1.0), io.CertifyRow(1, -1, 3, 0.5, 0, 1.0)]
    said = summary.lines(toy_settings(n=100_000, sigma=0.5), rows)
    assert said == ["no labels: certified accuracy is not defined", "2 images, 1 abstained; rows on stdout"]
    # no word on the cap: at n = 100,000 and sigma 0.5 it (1.91) lies beyond the summary's radii
    predict = [io.PredictRow(0, 2, -1, 0, 1.0), io.PredictRow(1, 2, 2, 1, 1.0)]
    assert summary.lines(toy_settings(out="p.tsv", command="predict"), predict) == [
        "accuracy 0.500; 2 images, 1 abstained; rows in p.tsv (settings in p.tsv.json)"]


# --- analyze --plot ---------------------------------------------------------------------------------------------

def test_plot_tells_twelve_curves_apart_and_says_where_it_went(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    files = []
    for k in range(12):
        path = tmp_path / f"run{k:02d}.tsv"
        rows = [io.CertifyRow(i, 1, 1, 0.1 * ((i + k) % 7), 1, 1.0) for i in range(5)]
        path.write_text("\t".join(io.CERTIFY_HEADER) + "\n" + "".join(io.format_certify_row(r) + "\n" for r in rows))
        files.append(str(path))
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), real_close(fig)))
    out = tmp_path / "curves.png"
    assert main(["analyze", *files, "--plot", str(out)]) == 0
    assert out.stat().st_size > 0
    assert f"12 curves of certified accuracy written to {out}" in capsys.readouterr().err
    lines = figures[0].axes[0].get_lines()
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(lines) == 12 and len(styles) == 12
    legend = [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()]
    assert legend == [os.path.basename(f) for f in files]


def test_error_lines_for_memory_and_unnamed_files():
    """What every rank of a torchrun run prints (errors.report): one line, no ``: `` before a reason without a file,
    and out of memory as the advice rather than the allocator's paragraph."""
    from diffsmooth_fast.run import errors

    assert errors.one_line(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert errors.one_line(OSError(errno.EFBIG, "File too large", "a.tsv")) == "a.tsv: File too large"
    for error in OOM:
        assert errors.is_user_error(error)
        assert errors.one_line(error) == "out of memory: try a smaller --batch, --dtype float16 or another --device"
    assert not errors.is_user_error(RuntimeError("index out of range in self"))


def test_plot_counts_each_image_once_and_draws_no_accuracy_for_unlabelled_files(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    rows = [io.CertifyRow(0, 1, 1, 0.5, 1, 1.0), io.CertifyRow(1, 1, 0, 0.0, 0, 1.0)]
    twice = tmp_path / "twice.tsv"  # idx 0 written by two writers: the table counts it once, so must the curve
    twice.write_text("\t".join(io.CERTIFY_HEADER) + "\n"
                     + "".join(io.format_certify_row(r) + "\n" for r in [*rows, rows[0]]))
    unlabelled = tmp_path / "unlabelled.tsv"
    unlabelled.write_text("\t".join(io.CERTIFY_HEADER) + "\n"
                          + io.format_certify_row(io.CertifyRow(0, -1, 2, 0.5, 0, 1.0)) + "\n")
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), real_close(fig)))
    assert main(["analyze", str(twice), str(unlabelled), "--plot", str(tmp_path / "c.png")]) == 0
    (line,) = figures[0].axes[0].get_lines()  # none for the unlabelled file
    assert line.get_ydata()[0] == pytest.approx(0.5)  # 1 of 2 images at radius 0, not 2 of 3
