"""The run loop of ``certify`` and ``predict``: checks first, then one image at a time, one TSV row each.

Order matters for the user's files: the output is checked (exists? resumable with these settings? writable?)
and the models are loaded and probed before anything is written, so every user error leaves existing files as
they were. Rows are flushed and fsynced one by one, so a killed run loses at most the image in progress.
"""

from __future__ import annotations

import datetime
import platform
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np
import scipy
import torch

from . import __version__, io, resume, stats
from .build import Job, build_job
from .configs import (DataConfig, ModelConfig, OutputConfig, SamplingConfig, check_combination, resolve_models,
                      result_settings)
from .pipeline import MethodConfig
from .progress import Progress

SUMMARY_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def run(command: str, data: DataConfig, models: ModelConfig, method: MethodConfig, sampling: SamplingConfig,
        output: OutputConfig, *, argv: Sequence[str] = (), options: Mapping[str, object] | None = None) -> int:
    """Run ``command`` (``certify`` or ``predict``) and write its TSV; returns the exit status (0).

    Raises:
        ValueError: a user error (one line), raised before any existing file is touched where it can be known.
    """
    if command not in ("certify", "predict"):
        raise ValueError(f"unknown command {command!r}")
    if command == "certify" and sampling.n < sampling.n0:
        raise ValueError(f"--n {sampling.n} is below --n0 {sampling.n0}: n estimation samples bound the "
                         f"probability, n0 only select the class (swapped?)")
    models = resolve_models(data, models, method)  # the demo's shipped checkpoints where none is given
    check_combination(data, models, method)
    header = io.CERTIFY_HEADER if command == "certify" else io.PREDICT_HEADER
    exists = resume.preflight(output.out, resume=output.resume, overwrite=output.overwrite)
    settings = result_settings(command, data, models, method, sampling)
    resuming = exists and output.resume
    if resuming:
        resume.check_resumable(output.out, header, settings)
    job = build_job(data, models, method, sampling)
    session = _session(job, argv, options or {})
    with resume.open_output(output.out, header, settings, session, resume=resuming) as stream:
        rows = (io.read_certify if command == "certify" else io.read_predict)(output.out) if resuming else []
        done = {row.idx for row in rows}
        todo = [idx for idx in job.indices if idx not in done]
        progress = Progress(len(job.indices), [(getattr(r, "radius", None), r.correct) for r in rows],
                            quiet=output.quiet)
        try:
            for idx in todo:
                rows.append(_one(command, job, sampling, idx))
                io.write_line(stream, _format(rows[-1]), sync=output.out != "-")
                r = rows[-1]
                progress.update(r.idx, r.label, r.predict, getattr(r, "radius", None), r.correct, r.time)
        finally:
            progress.close()
    _summary(command, rows, job)
    return 0


def _one(command: str, job: Job, sampling: SamplingConfig, idx: int) -> io.CertifyRow | io.PredictRow:
    x, label = job.images[idx]
    x = x.to(job.device)
    start = time.perf_counter()
    try:
        if command == "certify":
            pred, radius = job.smooth.certify(x, sampling.n0, sampling.n, sampling.alpha, sampling.batch, idx=idx)
        else:
            pred = job.smooth.predict(x, sampling.n, sampling.alpha, sampling.batch, idx=idx)
    except ValueError as exc:
        raise ValueError(f"image {idx}: {exc}") from None
    elapsed = time.perf_counter() - start
    label = int(label)
    if command == "certify":
        return io.CertifyRow(idx, label, pred, radius, int(pred == label), elapsed)
    return io.PredictRow(idx, label, pred, int(pred == label), elapsed)


def _format(row: io.CertifyRow | io.PredictRow) -> str:
    return io.format_certify_row(row) if isinstance(row, io.CertifyRow) else io.format_predict_row(row)


def _session(job: Job, argv: Sequence[str], options: Mapping[str, object]) -> dict[str, object]:
    """This session's entry in the sidecar: when, how it was called, every option, versions and device."""
    device = str(job.device)
    if job.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(job.device)})"
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "options": dict(options),
        "device": device,
        "noise_backend": job.backend,
        "num_classes": job.num_classes,
        "images": len(job.indices),
        "host": platform.node(),
        "versions": {"diffsmooth_fast": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "python": platform.python_version()},
    }


def _summary(command: str, rows: list, job: Job) -> None:
    if not rows:
        print("no images were processed", file=sys.stderr)
        return
    correct = [r.correct for r in rows]
    if command == "predict":
        abstain = sum(r.predict == stats.ABSTAIN for r in rows) / len(rows)
        print(f"accuracy {np.mean(correct):.3f}, abstained {abstain:.3f} of {len(rows)} images", file=sys.stderr)
        return
    radii = [r.radius for r in rows]
    acc = stats.certified_accuracy(radii, correct, SUMMARY_RADII)
    print("certified accuracy " + ", ".join(f"{a:.3f} at r={r}" for r, a in zip(SUMMARY_RADII, acc))
          + f"; ACR {stats.average_certified_radius(radii, correct):.3f}", file=sys.stderr)
    if job.exact_radius is not None:
        ratios = [r.radius / float(job.exact_radius[r.idx]) for r in rows if r.correct]
        if ratios:
            over = sum(1 for q in ratios if q > 1.0)
            print(f"toy check: certified/exact radius mean {sum(ratios) / len(ratios):.3f}; {over} of {len(ratios)} "
                  f"certificates above the exact radius (expected about alpha of them)", file=sys.stderr)
