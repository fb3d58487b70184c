"""Certification spread over processes started by ``torchrun``: by image (part files, merged) or by sample.

torchrun starts one process per GPU (or CPU worker) on each node and tells each its place through the
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); nothing here schedules anything itself. The processes
talk through ``torch.distributed``: NCCL between GPUs, gloo on CPUs, plus a small gloo group for control
messages (errors, the final wait), which works with either device.

Image sharding (the default): rank r of K certifies ``indices[r::K]`` and writes ``OUT`` with ``.rank{r}-of{K}``
before its extension (``runs/a.tsv`` -> ``runs/a.rank0-of2.tsv``), a resumable file with its own sidecar, exactly
like a single run's. When every rank is done, rank 0 merges the parts (and a resumed ``OUT``, if any) into
``OUT`` sorted by idx with one sidecar, then deletes the parts. Sample sharding (``--split-samples``): every rank
certifies every image but draws only its range of the samples (:class:`~diffsmooth_fast.smoothing.certify.SampleShard`);
the counts are summed by an all-reduce and rank 0 alone writes ``OUT``.

Both give the rows of a single process with the same seed, because the noise of a sample depends on its
position, not on the process that draws it. So ``OUT`` (merged or written by rank 0) carries the settings of a
single run and may be resumed with any number of processes; only unfinished part files tie a run to its K.

Failures: user errors found before the first image are exchanged, so every rank stops with the same one-line
error; a rank that dies closes its connections, which fails the others' pending gloo operations at once, and
torchrun stops the other processes on its node anyway. Workers restarted by torchrun (``--max-restarts``)
continue the run as with --resume. Test hook: ``DIFFSMOOTH_TEST_DIE_AFTER=R:N`` makes rank R kill itself
(SIGKILL) after finishing N images in this session (torchrun's first attempt only); the tests use it to kill a
rank mid-run.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import re
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from . import errors, resume
from . import tsv
from .atomic import write_atomically

MODES = ("images", "samples")
TEST_DIE_ENV = "DIFFSMOOTH_TEST_DIE_AFTER"
# The control group waits for the slowest rank to finish its share of the images, which may take hours: its
# timeout only bounds a rank that hangs (a rank that dies is noticed at once, its connections close).
WAIT_TIMEOUT = datetime.timedelta(days=7)

T = TypeVar("T")


class RankFailure(RuntimeError):
    """Another process of the run stopped answering (it died, or its node did): this one cannot go on."""


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn the backend's error when a peer is gone into a :class:`RankFailure` that says what to do."""
    try:
        yield
    except RuntimeError as exc:  # torch.distributed.DistError and gloo's "Connection closed by peer" among them
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RankFailure(f"lost another process while {what} ({first[:200]}); see the other processes' logs, "
                          f"then rerun the same command with --resume") from exc


@dataclass(frozen=True)
class Launch:
    """This process's place as torchrun gives it: ``rank`` of ``world_size`` overall, ``local_rank`` on its node;
    ``restarts`` is how often torchrun restarted the workers (``--max-restarts``)."""

    rank: int
    world_size: int
    local_rank: int
    restarts: int = 0


@dataclass(frozen=True)
class Context:
    """A started distributed run: this process's place, the mode (``images`` or ``samples``), the gloo group
    for control messages."""

    launch: Launch
    mode: str
    control: object  # torch.distributed ProcessGroup

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}"


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """This process's place when torchrun started it with more than one process, else None (a single run).

    Raises:
        ValueError: ``WORLD_SIZE`` > 1 without a valid ``RANK`` (not started by torchrun or a similar launcher).
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={env.get('WORLD_SIZE')!r} is not a number of processes") from None
    if world <= 1:
        return None
    try:
        rank = int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank))
        restarts = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except (KeyError, ValueError):
        raise ValueError(f"WORLD_SIZE is {world} but RANK/LOCAL_RANK are missing or not numbers: start several "
                         f"processes with torchrun (python -m torch.distributed.run)") from None
    if not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK {rank} / LOCAL_RANK {local} do not fit WORLD_SIZE {world}")
    return Launch(rank, world, local, restarts)


def local_device(device: str, launch: Launch) -> str:
    """The ``--device`` of this process: ``auto`` or ``cuda`` (no index) become ``cuda:LOCAL_RANK`` when CUDA is
    available, so the processes of a node use one GPU each; an explicit device is kept.

    Raises:
        ValueError: more processes on this node than GPUs.
    """
    wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not wants_cuda or not torch.cuda.is_available():
        return device
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise ValueError(f"local rank {launch.local_rank} has no GPU: this node has {count}; start at most "
                         f"{count} processes per node (torchrun --nproc-per-node {count})")
    return f"cuda:{launch.local_rank}"


def start(launch: Launch, device: torch.device, mode: str, timeout_minutes: float) -> Context:
    """Join the process group torchrun set up (NCCL for a CUDA device, else gloo) and make the control group.

    ``timeout_minutes`` bounds the start (all processes must join) and, in split-samples mode, each all-reduce.
    """
    if mode not in MODES:
        raise ValueError(f"unknown distributed mode {mode!r}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if launch.restarts and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):
        # Workers restarted by torchrun meet again in the agent's store, which may still hold the addresses the
        # dead attempt published: a fresh prefix per attempt keeps a worker from dialling a process that is gone.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), launch.world_size,
                              is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=dist.PrefixStore(f"diffsmooth/attempt_{launch.restarts}", store),
                                rank=launch.rank, world_size=launch.world_size, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return Context(launch, mode, control)


def stop(ctx: Context) -> None:
    """Leave the process group (NCCL warns at exit otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def agree(ctx: Context, action: Callable[[], T]) -> T:
    """Run ``action`` on every rank and stop all of them if it fails on any; returns its result here.

    Checks of the user's files and models run on each rank and usually fail alike, but not always (a file
    visible on one node only, a GPU out of memory): the ranks exchange their errors, so no rank starts
    certifying while another has given up (it would wait for it until a timeout).

    Raises:
        errors.Reported: a user error (a setting, a file) on any rank, printed here on every rank (this rank's
            own, or one naming the first failing rank); any other exception of this rank's as it is.
    """
    try:
        result, error = action(), None
    except Exception as exc:  # noqa: BLE001 - any failure must reach the other ranks before it is raised here
        result, error = None, exc
    message = None if error is None else (" ".join(str(error).split()) or type(error).__name__)
    messages: list[str | None] = [None] * ctx.world_size
    with _collective("checking the settings"):
        dist.all_gather_object(messages, message, group=ctx.control)
    failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if not failed:
        return result  # type: ignore[return-value]
    if error is None:
        rank, text = failed[0]
        error = ValueError(f"rank {rank} stopped the run: {text}")
    if not errors.is_user_error(error):
        raise error  # a bug or a crash: its traceback, from this rank
    # Every rank is stopping. torchrun stops the others as soon as one exits, so each prints its line first and
    # leaves only when all have (errors.py); a peer that cannot even do that is already gone.
    status = errors.report(error)
    with contextlib.suppress(RuntimeError):
        dist.barrier(group=ctx.control)
    raise errors.Reported(status) from error


def broadcast(ctx: Context, value: T) -> T:
    """Rank 0's ``value`` on every rank (a small picklable object)."""
    box = [value]
    with _collective("starting"):
        dist.broadcast_object_list(box, src=0, group=ctx.control)
    return box[0]


def wait_all(ctx: Context) -> None:
    """Return when every rank has called this (all parts written). No timeout to speak of: see WAIT_TIMEOUT."""
    with _collective("waiting for every process to finish its images"):
        dist.barrier(group=ctx.control)


def all_reduce_sum(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` in place over all ranks (NCCL on the GPU, gloo on the CPU)."""
    with _collective("summing the counts"):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def image_share(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s images: every ``world_size``-th from position ``rank``. Deterministic, balanced to one
    image, and stable when ``--max`` grows (position i always goes to rank i mod K)."""
    return list(indices[rank::world_size])


def die_if_told(ctx: Context, images_done: int) -> None:
    """Test hook: with ``DIFFSMOOTH_TEST_DIE_AFTER=R:N``, rank R kills itself (SIGKILL) after N images, in
    torchrun's first attempt only (so that a restart by ``--max-restarts`` can finish the run)."""
    spec = os.environ.get(TEST_DIE_ENV)
    if not spec or ctx.launch.restarts:
        return
    rank, count = (int(part) for part in spec.split(":"))
    if ctx.rank == rank and images_done >= count:
        os.kill(os.getpid(), signal.SIGKILL)


# Part files ----------------------------------------------------------------------------------------------------


def part_path(out: str, rank: int, world_size: int) -> str:
    """Rank ``rank``'s part of ``out``: ``.rank{r}-of{K}`` inserted before the extension."""
    root, ext = os.path.splitext(out)
    return f"{root}.rank{rank}-of{world_size}{ext}"


def find_parts(out: str) -> dict[int, list[str]]:
    """Existing part files of ``out`` by the number of processes that wrote them: {K: [paths]}."""
    root, ext = os.path.splitext(out)
    pattern = re.compile(re.escape(os.path.basename(root)) + r"\.rank(\d+)-of(\d+)" + re.escape(ext))
    found: dict[int, list[str]] = {}
    for path in sorted(glob.glob(f"{glob.escape(root)}.rank*-of*{glob.escape(ext)}")):
        match = pattern.fullmatch(os.path.basename(path))
        if match and int(match[1]) < int(match[2]):
            found.setdefault(int(match[2]), []).append(path)
    return found


def _names(paths: list[str]) -> str:
    return ", ".join(os.path.basename(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")


def check_no_parts(out: str, *, overwrite: bool, world_size: int | None = None) -> None:
    """Refuse to start or resume ``out`` while parts of an unfinished image-sharded run exist (from a run with
    another number of processes than ``world_size``; None: any), unless ``--overwrite`` (which removes them).

    Their rows would otherwise be lost or certified twice, and the parts of K processes cannot be resumed by
    another number of processes: each rank resumes its own part.
    """
    if out == "-" or overwrite:
        return
    for k, paths in sorted(find_parts(out).items()):
        if k != world_size:
            raise ValueError(f"{out} has the parts of an unfinished run over {k} processes ({_names(paths)}): "
                             f"resume it with {k} processes in all (nnodes x nproc-per-node = {k}), --resume and "
                             f"without --split-samples, or pass --overwrite to start over")


def preflight_images(out: str, world_size: int, rank: int, *, resume_run: bool, overwrite: bool) -> tuple[bool, bool]:
    """Check the output of an image-sharded run before any work; returns (``out`` exists, this rank's part exists).

    Raises:
        ValueError: stdout; the checks of :func:`diffsmooth_fast.run.resume.preflight`; parts of another number of
            processes; parts of this run without --resume or --overwrite.
    """
    if out == "-":
        raise ValueError("with several processes each one writes a part file: give --out FILE (or --split-samples, "
                         "where rank 0 alone writes and may print to stdout)")
    out_exists = resume.preflight(out, resume=resume_run, overwrite=overwrite)
    check_no_parts(out, overwrite=overwrite, world_size=world_size)
    mine = find_parts(out).get(world_size, [])
    if mine and not (resume_run or overwrite):
        raise ValueError(f"{out} has the parts of an unfinished run ({_names(mine)}): pass --resume to continue it "
                         f"or --overwrite to start over")
    part = part_path(out, rank, world_size)
    if os.path.isdir(part):
        raise ValueError(f"{part} is a directory; choose another --out")
    return out_exists, os.path.lexists(part)


def remove_outputs(out: str, *, keep_world_size: int | None = None) -> None:
    """For --overwrite: delete ``out``, its sidecar and the parts (see :func:`remove_parts`)."""
    if out == "-":
        return
    _remove(out)
    _remove(resume.sidecar_path(out))
    remove_parts(out, keep_world_size=keep_world_size)


def remove_parts(out: str, *, keep_world_size: int | None = None) -> None:
    """For --overwrite: delete the parts of ``out`` (and their sidecars) of any number of processes but
    ``keep_world_size`` (those are replaced by their ranks)."""
    if out == "-":
        return
    for k, parts in find_parts(out).items():
        if k != keep_world_size:
            for path in parts:
                _remove(path)
                _remove(resume.sidecar_path(path))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def merge_parts(out: str, header: tuple[str, ...], world_size: int, indices: Sequence[int],
                settings: Mapping[str, object]) -> list:
    """Merge ``out`` (if a resumed run left one) and the K parts into ``out``, sorted by idx; delete the parts.

    The sidecar keeps ``settings`` (a single run's: the rows do not depend on K) and every session: ``out``'s,
    then each part's. Written in an order that survives a kill at any point: the sidecar, then the TSV (both
    atomically: a temporary file, fsync, ``os.replace``), then the parts are removed; a rerun with --resume
    finds every row and merges again. Returns the merged rows.

    Raises:
        ValueError: a part is missing or an image of ``indices`` is in none of the files (for example parts on
            a disk that rank 0 cannot see: several nodes must share the output folder).
    """
    certify = tuple(header) == tsv.CERTIFY_HEADER
    read = tsv.read_certify if certify else tsv.read_predict
    rows: dict[int, object] = {}
    runs: list = []
    if os.path.exists(out):
        for row in read(out, torn_tail=True):
            rows.setdefault(row.idx, row)
        old = resume.read_sidecar(out)
        if resume.same_settings(old, settings):
            runs += old.get("runs", [])
    parts = [part_path(out, rank, world_size) for rank in range(world_size)]
    for part in parts:
        if not os.path.exists(part):
            raise ValueError(f"cannot merge {out}: {part} is missing (with several nodes, --out must be on a "
                             f"filesystem that every node shares)")
        for row in read(part):
            rows.setdefault(row.idx, row)
        runs += resume.read_sidecar(part).get("runs", [])
    missing = [idx for idx in indices if idx not in rows]
    if missing:
        raise ValueError(f"cannot merge {out}: {len(missing)} images are in no part (idx {missing[:5]}); rerun the "
                         f"same command with --resume")
    merged = [rows[idx] for idx in sorted(rows)]
    resume.write_sidecar(out, {"format": resume.SIDECAR_FORMAT, "settings": settings, "runs": runs})
    fmt = tsv.format_certify_row if certify else tsv.format_predict_row
    write_atomically(out, "".join(line + "\n" for line in ["\t".join(header), *(fmt(row) for row in merged)]))
    for part in parts:
        _remove(part)
        _remove(resume.sidecar_path(part))
    return merged
