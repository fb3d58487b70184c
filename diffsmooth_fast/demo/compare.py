"""The README's comparison on the demo: every method of the paper at sigma 0.25 and 0.50, then the table and plot.

    python -m diffsmooth_fast.demo.compare [--out runs/demo] [--n 2000] [--skip 3]

Each run is an ordinary ``diffsmooth-fast certify`` (printed before it starts) writing ``OUT/<run>.tsv``; an
interrupted comparison continues where it stopped when started again (finished runs are kept, a partial one is
resumed). Then ``diffsmooth-fast analyze --markdown --plot`` writes ``OUT/table.md`` and ``OUT/curves.png``
(the plot needs matplotlib).

Runs, at each sigma:

- ``cohen``: Gaussian smoothing of the classifier trained at sigma (Cohen et al.);
- ``dds``: one-shot denoise, then the standard classifier (DDS(Standard), Carlini et al.);
- ``dds-smoothed``: one-shot denoise, then the classifier trained at sigma, no local noise (DDS(Smoothed));
- ``diffsmooth-fixed`` / ``diffsmooth-fresh``: one-shot denoise, then m = 5 copies with sigma' = sigma noise
  through the classifier trained at sigma, the m noises fixed (the reference's way) or fresh per sample;
- ``local-only``: DiffSmooth without the denoiser (the paper's Table 3 ablation).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from ..run.cli import main as cli_main

SIGMAS = ("0.25", "0.50")


def runs(sigma: str) -> dict[str, list[str]]:
    """Run name -> the certify options that make it (beyond the shared sampling options)."""
    return {
        f"cohen_{sigma}": ["--method", "cohen"],
        f"dds_{sigma}": ["--method", "dds"],
        f"dds-smoothed_{sigma}": ["--method", "dds", "--demo-classifier", sigma],
        f"diffsmooth-fixed_{sigma}": ["--method", "diffsmooth", "--local-noise", "fixed"],
        f"diffsmooth-fresh_{sigma}": ["--method", "diffsmooth", "--local-noise", "fresh"],
        f"local-only_{sigma}": ["--method", "local-only"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffsmooth_fast.demo.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("runs", "demo"), help="folder for the TSV files, table and plot")
    parser.add_argument("--n", type=int, default=2000, help="estimation samples per image")
    parser.add_argument("--skip", type=int, default=3, help="every skip-th test image (3: 120 of the 360)")
    parser.add_argument("--m", type=int, default=5, help="local noise copies (DiffSmooth, local-only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress lines from the runs")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    shared = ["--dataset", "demo", "--n0", "100", "--n", str(args.n), "--skip", str(args.skip), "--m", str(args.m),
              "--alpha", "0.001", "--seed", str(args.seed), *(["--quiet"] if args.quiet else [])]
    paths = []
    for sigma in SIGMAS:
        for name, options in runs(sigma).items():
            path = os.path.join(args.out, f"{name}.tsv")
            command = ["certify", *shared, "--sigma", sigma, *options, "--out", path]
            if os.path.exists(path):
                command.append("--resume")  # finished: nothing to do; interrupted: continue
            print("diffsmooth-fast " + " ".join(command), file=sys.stderr, flush=True)
            status = cli_main(command)
            if status != 0:
                return status
            paths.append(path)
    table = os.path.join(args.out, "table.md")
    analyze = ["analyze", *paths, "--radii", "0,0.25,0.5,0.75,1.0,1.25", "--markdown"]
    try:
        import matplotlib  # noqa: F401  (only to decide whether to plot)

        analyze += ["--plot", os.path.join(args.out, "curves.png")]
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    print("diffsmooth-fast " + " ".join(analyze) + f" > {table}", file=sys.stderr, flush=True)
    with open(table, "w") as stream, contextlib.redirect_stdout(stream):
        status = cli_main(analyze)
    with open(table) as stream:
        print(stream.read(), end="")
    return status


if __name__ == "__main__":
    sys.exit(main())
