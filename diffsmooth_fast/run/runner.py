"""The run loop of ``certify`` and ``predict``: checks first, then one image at a time, one TSV row each.

Order matters for the user's files: the output is checked (exists? resumable with these settings? writable?)
and the models are loaded and probed before anything is written, so every user error leaves existing files as
they were. Rows are flushed and fsynced one by one, so a killed run loses at most the image in progress.

Started by torchrun with several processes, the same loop runs on every process, sharded by image (each writes
a part file; rank 0 merges them) or by sample (``--split-samples``: rank 0 writes); see
:mod:`diffsmooth_fast.run.distributed`.
"""

from __future__ import annotations

import contextlib
import datetime
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TextIO

import numpy as np
import scipy
import torch

from .._version import __version__
from ..engine.options import BATCH_AUTO
from ..smoothing.certify import SampleShard
from . import belonging, distributed, errors, lock, resume, summary, tsv
from .build import Job, build_job
from .configs import OutputConfig, RunSettings, SamplingConfig
from .progress import Progress


@dataclass(frozen=True)
class _Plan:
    """Everything one run was asked to do: its settings, and how it was called (for the sidecar)."""

    settings: RunSettings
    argv: Sequence[str]
    options: Mapping[str, object]

    @property
    def command(self) -> str:
        return self.settings.command

    @property
    def output(self) -> OutputConfig:
        return self.settings.output

    @property
    def header(self) -> tuple[str, ...]:
        if self.command == "predict":
            return tsv.PREDICT_HEADER
        return tsv.SEQUENTIAL_HEADER if self.settings.sampling.sequential else tsv.CERTIFY_HEADER

    def result_settings(self) -> dict[str, object]:
        return self.settings.result_settings()

    def build(self) -> Job:
        return build_job(self.settings)


def run(settings: RunSettings, *, argv: Sequence[str] = (), options: Mapping[str, object] | None = None) -> int:
    """Run ``settings.command`` (``certify`` or ``predict``) and write its TSV; returns the exit status (0).

    Under torchrun with several processes, ``settings.distribution`` says how they share the work.

    Raises:
        ValueError: a user error (one line), raised before any existing file is touched where it can be known.
    """
    try:
        return _run(settings, argv, options)
    except OSError as exc:  # a write or a flush names no file: on a full disk, name the output and what is kept
        if not errors.is_disk_full(exc) or exc.filename or settings.output.out == "-":
            raise
        out = settings.output.out
        raise ValueError(f"{out}: {exc.strerror or exc} (every finished row is kept: make room, then rerun with "
                         f"--resume)") from exc


def _run(settings: RunSettings, argv: Sequence[str], options: Mapping[str, object] | None) -> int:
    output, distribution = settings.output, settings.distribution
    launch = distributed.launch_from_env()
    if launch is None:
        return _run_single(_Plan(settings, argv, options or {}))
    mode = "samples" if distribution.split_samples else "images"
    if mode == "images" and output.out == "-":
        distributed.preflight_images(output.out, launch.world_size, launch.rank, resume_run=output.resume,
                                     overwrite=output.overwrite)  # raises: image sharding needs a file
    if launch.restarts and output.out != "-":  # torchrun --max-restarts restarted the workers: continue the run
        settings = replace(settings, output=replace(output, resume=True, overwrite=False))
    engine = replace(settings.engine, device=distributed.local_device(settings.engine.device, launch))
    settings = replace(settings, engine=engine)
    ctx = distributed.start(launch, engine.torch_device(), mode, distribution.timeout_minutes)
    try:
        with contextlib.ExitStack() as held:  # rank 0's lock on the output, until the last file is written
            return (_run_images if mode == "images" else _run_samples)(ctx, _Plan(settings, argv, options or {}), held)
    finally:
        distributed.stop(ctx)


def _run_single(plan: _Plan) -> int:
    """One process: check, lock the output, build, then certify the images not yet in ``--out``."""
    out = plan.output
    resume.preflight(out.out, resume=out.resume, overwrite=out.overwrite)  # the user's mistakes, before any file
    with lock.hold(out.out):
        return _run_locked(plan)


def _run_locked(plan: _Plan) -> int:
    out = plan.output
    # Checked again now that no other run can write it: one may have made or finished the file in the meantime.
    exists = resume.preflight(out.out, resume=out.resume, overwrite=out.overwrite)
    distributed.check_no_parts(out.out, overwrite=out.overwrite)
    settings = plan.result_settings()
    resuming = exists and out.resume
    if resuming:
        resume.check_resumable(out.out, plan.header, settings)
    job = plan.build()
    rows = resume.resumable_rows(out.out, plan.header, _images_of_run(plan, job, out.out)) if resuming else []
    _note_batch(plan, job)
    if out.overwrite:
        distributed.remove_parts(out.out)  # out itself is replaced by open_output
    session = _session(job, plan.argv, plan.options)
    with resume.open_output(out.out, plan.header, settings, session, resume=resuming) as stream:
        done = {row.idx for row in rows}
        progress = Progress(len(job.indices), _already(rows), quiet=out.quiet)
        rows += _certify_all(plan, job, [idx for idx in job.indices if idx not in done], stream, progress)
    summary.report(plan.settings, rows, job.exact_radius)
    return 0


def _run_images(ctx: distributed.Context, plan: _Plan, held: contextlib.ExitStack) -> int:
    """Image sharding: this rank certifies its share into its part file; rank 0 merges the parts at the end."""
    out, rank, world = plan.output.out, ctx.rank, ctx.world_size
    part = distributed.part_path(out, rank, world)

    def prepare() -> tuple[dict[str, object], Job, bool, list]:
        out_exists, part_exists = distributed.preflight_images(out, world, rank, resume_run=plan.output.resume,
                                                               overwrite=plan.output.overwrite)
        settings = plan.result_settings()
        resuming = plan.output.resume
        if resuming and out_exists:
            resume.check_resumable(out, plan.header, settings)
        if resuming and part_exists:
            resume.check_resumable(part, plan.header, _part_settings(settings, rank, world))
        job = plan.build()
        # An earlier run's merged rows are done; this rank's part holds only its share.
        merged = resume.resumable_rows(out, plan.header, _images_of_run(plan, job, out)) \
            if resuming and out_exists else []
        mine = resume.resumable_rows(part, plan.header, _images_of_run(plan, job, part)[rank::world]) \
            if resuming and part_exists else []
        return settings, job, resuming and part_exists, merged + mine

    _lock_run(ctx, plan, held)
    settings, job, resuming, earlier = distributed.agree(ctx, prepare)
    _note_batch(plan, job, f"{ctx.label} ")
    if plan.output.overwrite and rank == 0:
        distributed.remove_outputs(out, keep_world_size=world)  # the ranks replace their own parts
    share = distributed.image_share(job.indices, rank, world)
    session = {**_session(job, plan.argv, plan.options), "images": len(share),
               "distributed": {"mode": "images", "rank": rank, "world_size": world}}
    with resume.open_output(part, plan.header, _part_settings(settings, rank, world), session,
                            resume=resuming) as stream:
        mine = set(share)
        rows = [row for row in earlier if row.idx in mine]
        done = {row.idx for row in rows}
        progress = Progress(len(share), _already(rows), quiet=plan.output.quiet, tty=False, label=ctx.label)
        _certify_all(plan, job, [idx for idx in share if idx not in done], stream, progress, ctx)
    distributed.wait_all(ctx)
    if rank != 0:
        return 0
    summary.report(plan.settings, distributed.merge_parts(out, plan.header, world, job.indices, settings),
                   job.exact_radius)
    return 0


def _run_samples(ctx: distributed.Context, plan: _Plan, held: contextlib.ExitStack) -> int:
    """Sample sharding: every rank draws its part of each image's samples; rank 0 alone checks and writes."""
    out, rank = plan.output, ctx.rank

    def prepare() -> tuple[dict[str, object], Job, bool, list]:
        exists = False
        if rank == 0:
            exists = resume.preflight(out.out, resume=out.resume, overwrite=out.overwrite)
            distributed.check_no_parts(out.out, overwrite=out.overwrite)
        settings = plan.result_settings()
        if rank == 0 and exists and out.resume:
            resume.check_resumable(out.out, plan.header, settings)
        job = plan.build()
        resuming = exists and out.resume  # rank 0's answer; the others write nothing
        rows = resume.resumable_rows(out.out, plan.header, _images_of_run(plan, job, out.out)) if resuming else []
        return settings, job, resuming, rows

    _lock_run(ctx, plan, held)
    settings, job, resuming, rows = distributed.agree(ctx, prepare)
    _note_batch(plan, job, f"{ctx.label} ")
    job = replace(job, smooth=job.smooth.with_shard(SampleShard(rank, ctx.world_size, distributed.all_reduce_sum)))
    if rank == 0 and out.overwrite:
        distributed.remove_parts(out.out)  # out itself is replaced by open_output
    session = {**_session(job, plan.argv, plan.options),
               "distributed": {"mode": "samples", "world_size": ctx.world_size}}
    output = (resume.open_output(out.out, plan.header, settings, session, resume=resuming) if rank == 0
              else contextlib.nullcontext(None))
    with output as stream:
        done = set(distributed.broadcast(ctx, [row.idx for row in rows]))  # every rank: the same images
        progress = Progress(len(job.indices), _already(rows), quiet=out.quiet or rank != 0)
        rows += _certify_all(plan, job, [idx for idx in job.indices if idx not in done], stream, progress, ctx)
    if rank == 0:
        summary.report(plan.settings, rows, job.exact_radius)
    return 0


def _lock_run(ctx: distributed.Context, plan: _Plan, held: contextlib.ExitStack) -> None:
    """Rank 0 locks the output for the whole run (until ``held`` closes), before any rank looks at the files.

    One lock for the run rather than one per part file: every file of a run (OUT, its sidecar, the parts) is named
    after OUT, so OUT.lock covers them all, and it also stops a second run with another number of processes,
    whose parts have other names. Its own step, so that the other ranks check the files only once no other run
    can change them.
    """
    def take() -> None:
        if ctx.rank == 0:
            out = plan.output
            resume.preflight(out.out, resume=out.resume, overwrite=out.overwrite)  # the user's mistakes first
            held.enter_context(lock.hold(out.out))

    distributed.agree(ctx, take)


def _images_of_run(plan: _Plan, job: Job, path: str) -> range:
    """The images whose rows ``path`` may hold: this run's (every skip-th from 0), up to the most any session of
    ``path`` asked for (see :func:`~diffsmooth_fast.run.belonging.run_images`)."""
    grid = range(0, len(job.images), plan.settings.data.skip)
    return belonging.run_images(resume.read_sidecar(path), grid, len(job.indices))


def _note_batch(plan: _Plan, job: Job, label: str = "") -> None:
    """Say on stderr which batch ``--batch auto`` picked (it is also in the sidecar's session entry)."""
    if plan.settings.engine.batch == BATCH_AUTO and not plan.output.quiet:
        print(f"{label}--batch auto: {job.batch} noisy samples per call on {job.device}", file=sys.stderr)


def _part_settings(settings: Mapping[str, object], rank: int, world_size: int) -> dict[str, object]:
    """A part file's settings: the run's, and which part it is (a resume with another K is refused)."""
    return {**settings, "part": {"rank": rank, "world_size": world_size}}


def _already(rows: list) -> list[tuple[float | None, int]]:
    return [(getattr(r, "radius", None), r.correct) for r in rows]


def _certify_all(plan: _Plan, job: Job, todo: list[int], stream: TextIO | None, progress: Progress,
                 ctx: distributed.Context | None = None) -> list:
    """Certify (or predict) the images ``todo`` in order; each row is written to ``stream`` (None: not written)
    as soon as it is done. Returns the new rows."""
    rows = []
    try:
        for idx in todo:
            row = _one(plan.command, job, plan.settings.sampling, idx)
            if stream is not None:
                tsv.write_line(stream, _format(row), sync=plan.output.out != "-")
            rows.append(row)
            progress.update(row.idx, row.label, row.predict, getattr(row, "radius", None), row.correct, row.time,
                            getattr(row, "samples", None))
            if ctx is not None:
                distributed.die_if_told(ctx, len(rows))
    finally:
        progress.close()
    return rows


def _one(command: str, job: Job, sampling: SamplingConfig, idx: int) -> tsv.CertifyRow | tsv.PredictRow:
    x, label = job.images[idx]
    x = x.to(job.device)
    start = time.perf_counter()
    try:
        samples = None
        if command == "certify" and sampling.sequential:
            pred, radius, samples = job.smooth.certify_sequential(x, sampling.n0, sampling.n, sampling.alpha,
                                                                  job.batch, radii=sampling.radii, idx=idx)
        elif command == "certify":
            pred, radius = job.smooth.certify(x, sampling.n0, sampling.n, sampling.alpha, job.batch, idx=idx)
        else:
            pred = job.smooth.predict(x, sampling.n, sampling.alpha, job.batch, idx=idx)
    except ValueError as exc:
        raise ValueError(f"image {idx}: {exc}") from None
    except (RuntimeError, MemoryError) as exc:
        if not errors.is_out_of_memory(exc):
            raise
        raise errors.out_of_memory(job.device, job.batch, idx) from None
    elapsed = time.perf_counter() - start
    label = int(label)
    correct = tsv.is_correct(label, pred)
    if command == "certify":
        return tsv.CertifyRow(idx, label, pred, radius, correct, elapsed, samples)
    return tsv.PredictRow(idx, label, pred, correct, elapsed)


def _format(row: tsv.CertifyRow | tsv.PredictRow) -> str:
    return tsv.format_certify_row(row) if isinstance(row, tsv.CertifyRow) else tsv.format_predict_row(row)


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
        "batch": job.batch,  # --batch auto resolved; not a result setting (noise is drawn by position)
        "images": len(job.indices),
        "run_images": len(job.indices),  # the run's, also where "images" counts one process's share
        "host": platform.node(),
        "versions": {"diffsmooth_fast": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "python": platform.python_version()},
    }
