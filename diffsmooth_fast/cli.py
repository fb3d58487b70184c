"""The `diffsmooth-fast` command line.

Today: ``certify`` on the built-in toy problem (a linear classifier with known exact radii). Output is
Cohen et al.'s certify TSV on stdout or --out; progress and a summary go to stderr. User errors print one
line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

import torch

from . import io, stats
from .certify import Smooth
from .demo import make_toy


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffsmooth-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cert = sub.add_parser("certify", help="certify images with a smoothed classifier (Cohen's TSV out)")
    cert.add_argument("--dataset", choices=["toy"], default="toy", help="images and model to certify")
    cert.add_argument("--sigma", type=float, default=0.25, help="Gaussian noise level (pixels in [0, 1])")
    cert.add_argument("--n0", type=int, default=100, help="selection samples per image")
    cert.add_argument("--n", type=int, default=10_000, help="estimation samples per image")
    cert.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    cert.add_argument("--batch", type=int, default=1000, help="samples per classifier call")
    cert.add_argument("--seed", type=int, default=0, help="noise seed (with the image index, fixes all noise)")
    cert.add_argument("--skip", type=int, default=1, help="certify every skip-th image")
    cert.add_argument("--max", type=int, default=-1, help="stop after this many images (-1: all)")
    cert.add_argument("--backend", default="auto", help="noise backend: auto, cuda, triton, cpp, torch")
    cert.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    cert.add_argument("--out", default="-", help="output TSV path, or - for stdout")
    cert.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


@contextlib.contextmanager
def _open_out(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdout
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            yield f


def _certify(args: argparse.Namespace) -> int:
    if args.skip < 1:
        raise ValueError(f"--skip must be >= 1, got {args.skip}")
    device = torch.device(args.device)
    problem = make_toy()
    model = problem.model.to(device)
    smooth = Smooth(model, problem.num_classes, args.sigma, seed=args.seed, backend=args.backend)
    indices = list(range(0, len(problem.images), args.skip))
    if args.max >= 0:
        indices = indices[: args.max]
    radii, correct, ratios = [], [], []
    with _open_out(args.out) as out:
        io.write_certify_header(out)
        for count, idx in enumerate(indices, start=1):
            x = problem.images[idx].to(device)
            label = int(problem.labels[idx])
            start = time.perf_counter()
            pred, radius = smooth.certify(x, args.n0, args.n, args.alpha, args.batch, idx=idx)
            elapsed = time.perf_counter() - start
            row = io.CertifyRow(idx, label, pred, radius, int(pred == label), elapsed)
            io.write_certify_row(out, row, sync=args.out != "-")
            radii.append(radius)
            correct.append(row.correct)
            exact = float(problem.exact_radius[idx])
            if row.correct:
                ratios.append(radius / exact)
            if not args.quiet:
                print(
                    f"[{count}/{len(indices)}] idx {idx}: predict {pred} (label {label}) radius {radius:.3f} "
                    f"(exact {exact:.3f}) in {elapsed:.2f}s",
                    file=sys.stderr,
                )
    at = [0.0, 0.25, 0.5, 0.75, 1.0]
    acc = stats.certified_accuracy(radii, correct, at)
    print(
        "certified accuracy "
        + ", ".join(f"{a:.3f} at r={r}" for r, a in zip(at, acc))
        + f"; ACR {stats.average_certified_radius(radii, correct):.3f}",
        file=sys.stderr,
    )
    if ratios:
        over = sum(1 for r in ratios if r > 1.0)
        print(
            f"toy check: certified/exact radius mean {sum(ratios) / len(ratios):.3f}; "
            f"{over} of {len(ratios)} certificates above the exact radius (expected about alpha of them)",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return _certify(args)
    except ValueError as exc:
        print(f"diffsmooth-fast: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"diffsmooth-fast: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
